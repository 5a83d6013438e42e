//! Stores: the backends an operator defines in the webhook's config. A pod names a
//! store; it can never supply an address, so no pod can send its token to a server
//! of its choosing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::access::{self, Grant};

/// `defaultStore` and `stores` of the webhook config.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stores {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_store: Option<String>,
    #[serde(default)]
    pub stores: BTreeMap<String, Store>,
}

impl Stores {
    /// The store a pod asked for, or the default one.
    pub fn resolve(&self, requested: Option<&str>) -> Result<(&str, &Store), StoreError> {
        let name = match requested.or(self.default_store.as_deref()) {
            Some(name) => name,
            None => return Err(StoreError::NoDefault { known: self.known() }),
        };
        self.stores
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| StoreError::Unknown { name: name.to_owned(), known: self.known() })
    }

    fn known(&self) -> String {
        if self.stores.is_empty() {
            "none are configured".to_owned()
        } else {
            let names: Vec<&str> = self.stores.keys().map(String::as_str).collect();
            format!("known stores: {}", names.join(", "))
        }
    }

    /// Checks what serde cannot: a default that names a store, audiences present.
    pub fn validate(&self) -> Result<(), InvalidStores> {
        if let Some(default) = &self.default_store
            && !self.stores.contains_key(default)
        {
            return Err(InvalidStores::NoSuchDefault(default.clone()));
        }
        for (name, store) in &self.stores {
            if store.audience().is_empty() {
                return Err(InvalidStores::EmptyAudience(name.clone()));
            }
            if let Store::Vault(v) = store
                && !(v.address.starts_with("https://") || v.address.starts_with("http://"))
            {
                return Err(InvalidStores::NotHttp(name.clone()));
            }
            if let Some(allow) = store.allow() {
                access::validate(allow).map_err(|reason| InvalidStores::Allow { store: name.clone(), reason })?;
            }
        }
        Ok(())
    }
}

/// What [`Stores::validate`] refuses in the operator's config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidStores {
    #[error("defaultStore {0:?} is not defined under stores")]
    NoSuchDefault(String),
    #[error("store {0:?}: audience must not be empty")]
    EmptyAudience(String),
    #[error("store {0:?}: address must be an http(s) URL")]
    NotHttp(String),
    #[error("store {store:?}: allow: {reason}")]
    Allow { store: String, reason: &'static str },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("no store named and no defaultStore configured ({known})")]
    NoDefault { known: String },
    #[error("unknown store {name:?} ({known})")]
    Unknown { name: String, known: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Vault,
    AwsSsm,
    AwsSecretsManager,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Vault => "vault",
            StoreKind::AwsSsm => "aws-ssm",
            StoreKind::AwsSecretsManager => "aws-secretsmanager",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Store {
    Vault(VaultStore),
    AwsSsm(SsmStore),
    /// The same fields as `aws-ssm`; `endpoint` is Secrets Manager's.
    #[serde(rename = "aws-secretsmanager")]
    AwsSecretsManager(SsmStore),
}

impl Store {
    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Vault(_) => StoreKind::Vault,
            Store::AwsSsm(_) => StoreKind::AwsSsm,
            Store::AwsSecretsManager(_) => StoreKind::AwsSecretsManager,
        }
    }
    pub fn audience(&self) -> &str {
        match self {
            Store::Vault(v) => &v.audience,
            Store::AwsSsm(s) | Store::AwsSecretsManager(s) => &s.audience,
        }
    }
    pub fn default_role(&self) -> Option<&str> {
        match self {
            Store::Vault(v) => v.default_role.as_deref(),
            Store::AwsSsm(s) | Store::AwsSecretsManager(s) => s.default_role.as_deref(),
        }
    }
    /// Which namespaces may use the store (`None`: all of them).
    pub fn allow(&self) -> Option<&[Grant]> {
        match self {
            Store::Vault(v) => v.allow.as_deref(),
            Store::AwsSsm(s) | Store::AwsSecretsManager(s) => s.allow.as_deref(),
        }
    }
    /// The store as the injector needs it: without the grants, the default
    /// role (the plan has the role) and the rotation controller's role, which
    /// are the operator's business and would show on every pod.
    pub fn for_plan(&self) -> Store {
        let mut store = self.clone();
        match &mut store {
            Store::Vault(v) => {
                v.allow = None;
                v.default_role = None;
                v.rotation_role = None;
            }
            Store::AwsSsm(s) | Store::AwsSecretsManager(s) => {
                s.allow = None;
                s.default_role = None;
                s.rotation_role = None;
            }
        }
        store
    }
    /// Whether pods may have values generated and stored when missing.
    pub fn allow_generate(&self) -> bool {
        match self {
            Store::Vault(v) => v.allow_generate,
            Store::AwsSsm(s) => s.allow_generate,
            Store::AwsSecretsManager(_) => false,
        }
    }
    /// The rotation controller's own role: it reads versions (metadata) only.
    pub fn rotation_role(&self) -> Option<&str> {
        match self {
            Store::Vault(v) => v.rotation_role.as_deref(),
            Store::AwsSsm(s) | Store::AwsSecretsManager(s) => s.rotation_role.as_deref(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultStore {
    pub address: String,
    pub auth: VaultAuth,
    #[serde(default = "default_vault_audience")]
    pub audience: String,
    /// PEM bundle trusted for `address`, in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_role: Option<String>,
    /// Auth role of the rotation controller (a policy that reads KV metadata only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_role: Option<String>,
    /// Which namespaces may use the store, with which roles and paths
    /// (crate::access); absent: every namespace, any role, any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<Grant>>,
    /// Pods may ask for values made when missing (`keyhole.dev/generate-<name>`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_generate: bool,
}

fn default_vault_audience() -> String {
    "vault".to_owned()
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultAuth {
    pub method: VaultAuthMethod,
    /// Mount path of the auth method, `kubernetes` or `jwt` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
}

impl VaultAuth {
    pub fn mount(&self) -> &str {
        self.mount.as_deref().unwrap_or(self.method.as_str())
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuthMethod {
    Kubernetes,
    Jwt,
}

impl VaultAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            VaultAuthMethod::Kubernetes => "kubernetes",
            VaultAuthMethod::Jwt => "jwt",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SsmStore {
    pub region: String,
    #[serde(default = "default_sts_audience")]
    pub audience: String,
    /// SSM endpoint: a VPC endpoint, or a local emulator in tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_role: Option<String>,
    /// IAM role the rotation controller assumes (`ssm:DescribeParameters` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_role: Option<String>,
    /// Which namespaces may use the store, with which roles and paths
    /// (crate::access); absent: every namespace, any role, any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<Grant>>,
    /// Pods may ask for values made when missing (`keyhole.dev/generate-<name>`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_generate: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_sts_audience() -> String {
    "sts.amazonaws.com".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"{
        "defaultStore": "vault",
        "stores": {
            "vault": {"kind": "vault", "address": "https://vault:8200", "auth": {"method": "jwt"}},
            "aws": {"kind": "aws-ssm", "region": "eu-west-1", "defaultRole": "arn:aws:iam::1:role/x"}
        }
    }"#;

    #[test]
    fn parses_and_resolves_stores() {
        let stores: Stores = serde_json::from_str(YAML).unwrap();
        stores.validate().unwrap();
        let (name, store) = stores.resolve(None).unwrap();
        assert_eq!(name, "vault");
        assert_eq!(store.audience(), "vault");
        let Store::Vault(v) = store else { panic!("vault") };
        assert_eq!(v.auth.mount(), "jwt");
        let (_, aws) = stores.resolve(Some("aws")).unwrap();
        assert_eq!(aws.audience(), "sts.amazonaws.com");
        assert_eq!(aws.rotation_role(), None);
        let json = serde_json::to_string(aws).unwrap();
        assert!(!json.contains("rotationRole"), "an unset rotationRole is not written: {json}");
        let with: Store = serde_json::from_str(
            r#"{"kind": "aws-ssm", "region": "eu-west-1", "rotationRole": "arn:aws:iam::1:role/rot"}"#,
        )
        .unwrap();
        assert_eq!(with.rotation_role(), Some("arn:aws:iam::1:role/rot"));
        assert_eq!(aws.kind().as_str(), "aws-ssm");
        let err = stores.resolve(Some("nope")).unwrap_err();
        assert_eq!(err.to_string(), r#"unknown store "nope" (known stores: aws, vault)"#);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_default() {
        let bad =
            r#"{"stores": {"v": {"kind": "vault", "address": "https://v", "auth": {"method": "jwt"}, "adress": "x"}}}"#;
        assert!(serde_json::from_str::<Stores>(bad).is_err());
        let stores: Stores = serde_json::from_str(r#"{"defaultStore": "x", "stores": {}}"#).unwrap();
        assert!(stores.validate().is_err());
    }
}
