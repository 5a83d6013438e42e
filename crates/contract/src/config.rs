//! The operator's config file (YAML): the injector's image and resources, and the stores.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{Store, Stores};
use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::Deserialize;

#[derive(Clone, Debug)]
pub struct Config {
    pub injector: InjectorConfig,
    pub stores: Stores,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectorConfig {
    /// The keyhole image; the webhook's own image, so webhook and injector never skew.
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
}

fn default_resources() -> ResourceRequirements {
    serde_json::from_value(serde_json::json!({
        "requests": {"cpu": "10m", "memory": "16Mi"},
        "limits": {"memory": "64Mi"}
    }))
    .expect("static resources")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    injector: InjectorConfig,
    #[serde(default)]
    default_store: Option<String>,
    #[serde(default)]
    stores: BTreeMap<String, Store>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse { path: String, source: serde_yaml::Error },
    #[error("config {path}: {source}")]
    Stores { path: String, source: crate::store::InvalidStores },
    #[error("config {path}: injector.image is empty")]
    NoImage { path: String },
}

impl ConfigError {
    /// The same error, naming the file it came from.
    pub fn at(self, path: &str) -> ConfigError {
        let path = path.to_owned();
        match self {
            ConfigError::Read { source, .. } => ConfigError::Read { path, source },
            ConfigError::Parse { source, .. } => ConfigError::Parse { path, source },
            ConfigError::Stores { source, .. } => ConfigError::Stores { path, source },
            ConfigError::NoImage { .. } => ConfigError::NoImage { path },
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        Config::parse(&text).map_err(|e| e.at(&p))
    }

    pub fn parse(yaml: &str) -> Result<Config, ConfigError> {
        let file: File =
            serde_yaml::from_str(yaml).map_err(|source| ConfigError::Parse { path: String::new(), source })?;
        let stores = Stores { default_store: file.default_store, stores: file.stores };
        stores.validate().map_err(|source| ConfigError::Stores { path: String::new(), source })?;
        if file.injector.image.trim().is_empty() {
            return Err(ConfigError::NoImage { path: String::new() });
        }
        Ok(Config { injector: file.injector, stores })
    }
}
