//! Values made when missing (`keyhole.dev/generate-<name>`): random from the
//! system's CSPRNG, stored with a write that never overwrites (SSM
//! `Overwrite=false`, Vault KV v2 check-and-set 0). Whoever loses a race reads
//! the winner's value, so every pod of a revision sees one value.

use base64::Engine;
use keyhole_contract::Store;
use keyhole_contract::generate::Recipe;
use keyhole_contract::plan::PlanItem;
use keyhole_contract::reference::Reference;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::retry::Failure;
use crate::{Ctx, ssm, vault};

/// A fresh value of `recipe`.
pub fn make(recipe: &Recipe) -> SecretString {
    let rng = SystemRandom::new();
    let fill = |buf: &mut [u8]| rng.fill(buf).expect("the system's random source works");
    match *recipe {
        Recipe::Bytes { count } => {
            let mut bytes = Zeroizing::new(vec![0u8; count]);
            fill(&mut bytes);
            SecretString::from(base64::engine::general_purpose::STANDARD.encode(&*bytes))
        }
        Recipe::Chars { length, alphabet } => {
            let chars = alphabet.chars();
            // Rejection sampling: only bytes below a multiple of the alphabet's
            // size are used, so every character is equally likely.
            let limit = 256 - 256 % chars.len();
            let mut out = Zeroizing::new(String::with_capacity(length));
            let mut buf = Zeroizing::new([0u8; 64]);
            while out.len() < length {
                fill(&mut *buf);
                for &b in buf.iter().filter(|&&b| (b as usize) < limit) {
                    if out.len() == length {
                        break;
                    }
                    out.push(chars[b as usize % chars.len()] as char);
                }
            }
            SecretString::from(std::mem::take(&mut *out))
        }
    }
}

/// For each of `items` (the missing ones with a recipe): makes a value and
/// writes it if absent. Failures are returned, not raised: the caller reads
/// again, and reports the write's reason only for a value still missing.
pub async fn write_missing(ctx: &Ctx, store: &Store, items: &[&PlanItem]) -> Result<Vec<(String, Failure)>, Error> {
    let wanted: Vec<&PlanItem> = items.iter().copied().filter(|i| i.generate.is_some()).collect();
    let mut failed = Vec::new();
    if wanted.is_empty() || !store.allow_generate() {
        return Ok(failed);
    }
    match store {
        Store::AwsSsm(s) => {
            let client = ssm::client(ctx, s).await?;
            for item in wanted {
                let (Reference::AwsSsm(r), Some(recipe)) = (&item.reference, &item.generate) else { continue };
                if let Err(f) = ssm::put_if_absent(&client, &r.name, &make(recipe)).await {
                    failed.push((item.name.clone(), f));
                }
            }
        }
        Store::Vault(v) => {
            let session = vault::login(ctx, v).await?;
            for item in wanted {
                let (Reference::Vault(r), Some(recipe)) = (&item.reference, &item.generate) else { continue };
                let Some(field) = &r.field else { continue };
                if let Err(f) = session.create_if_absent(&r.path, field, &make(recipe)).await {
                    failed.push((item.name.clone(), f));
                }
            }
            let _ =
                vault::revoke(&session, &ctx.store, tokio::time::Instant::now() + std::time::Duration::from_secs(2))
                    .await;
        }
        Store::AwsSecretsManager(_) => {}
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhole_contract::generate::Alphabet;
    use secrecy::ExposeSecret;

    #[test]
    fn values_have_the_recipes_length_and_alphabet_and_differ() {
        let r = Recipe::Chars { length: 40, alphabet: Alphabet::Hex };
        let (a, b) = (make(&r), make(&r));
        assert_eq!(a.expose_secret().len(), 40);
        assert!(a.expose_secret().bytes().all(|c| Alphabet::Hex.chars().contains(&c)));
        assert_ne!(a.expose_secret(), b.expose_secret());
        let bytes = make(&Recipe::Bytes { count: 32 });
        let decoded = base64::engine::general_purpose::STANDARD.decode(bytes.expose_secret()).unwrap();
        assert_eq!(decoded.len(), 32);
        let sym = make(&Recipe::Chars { length: 256, alphabet: Alphabet::Symbols });
        assert!(sym.expose_secret().bytes().all(|c| Alphabet::Symbols.chars().contains(&c)));
    }
}
