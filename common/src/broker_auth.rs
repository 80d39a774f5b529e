//! SASL/SCRAM users for the embedded broker.
//!
//! tansu checks SCRAM logins against credentials kept in its storage, and a
//! client can only add one after it has logged in. So the users a secured
//! test broker accepts are written into its SQLite storage before it starts,
//! as Kafka's own `kafka-storage format --add-scram` does: the salted keys
//! of RFC 5802, never the password.

use crate::broker::{BrokerError, CLUSTER_ID};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::digest::typenum::Unsigned as _;
use sha2::{Digest, Sha256, Sha512};
use tansu_sans_io::ScramMechanism;
use tansu_storage::{BrokerRegistrationRequest, ScramCredential, Storage, StorageContainer};
use url::Url;

/// PBKDF2 iterations: Kafka's default for SCRAM credentials.
const ITERATIONS: u32 = 4096;

/// Stores a SCRAM-SHA-256 and a SCRAM-SHA-512 credential for each
/// `(user, password)` in the SQLite storage at `storage`.
pub(crate) async fn store_scram_users(
    storage: &Url,
    advertised: &Url,
    users: &[(String, String)],
) -> Result<(), BrokerError> {
    let fail = |user: &str, message: String| BrokerError::Credentials {
        user: user.to_owned(),
        message,
    };
    let first = users.first().map(|(u, _)| u.as_str()).unwrap_or_default();
    if storage.scheme() != "sqlite" {
        return Err(fail(
            first,
            "SCRAM users need SQLite broker storage (tansu keeps no credentials in memory)".into(),
        ));
    }
    let engine = StorageContainer::builder()
        .cluster_id(CLUSTER_ID)
        .node_id(0)
        .advertised_listener(advertised.clone())
        .storage(storage.clone())
        .silent(true)
        .build()
        .await
        .map_err(|e| fail(first, format!("{e:?}")))?;
    // Credentials belong to a registered cluster (a foreign key), as they do
    // when the broker itself stores one.
    engine
        .register_broker(BrokerRegistrationRequest {
            broker_id: 0,
            cluster_id: CLUSTER_ID.to_owned(),
            incarnation_id: uuid::Uuid::new_v4(),
            rack: None,
        })
        .await
        .map_err(|e| fail(first, format!("{e:?}")))?;
    for (user, password) in users {
        for mechanism in [ScramMechanism::Scram256, ScramMechanism::Scram512] {
            engine
                .upsert_user_scram_credential(user, mechanism, credential(mechanism, password))
                .await
                .map_err(|e| fail(user, format!("{e:?}")))?;
        }
    }
    Ok(())
}

/// `(StoredKey, ServerKey)` for a password and salt with the hash `$hash`
/// (RFC 5802, section 3).
macro_rules! scram_keys {
    ($hash:ty, $password:expr, $salt:expr) => {{
        let mut salted = [0u8; <$hash as sha2::digest::OutputSizeUser>::OutputSize::USIZE];
        pbkdf2::pbkdf2_hmac::<$hash>($password.as_bytes(), $salt, ITERATIONS, &mut salted);
        let hmac = |message: &[u8]| {
            let mut mac = <Hmac<$hash> as Mac>::new_from_slice(&salted)
                .expect("HMAC takes a key of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        };
        let stored_key = <$hash>::digest(hmac(b"Client Key")).to_vec();
        (stored_key, hmac(b"Server Key"))
    }};
}

/// The stored form of `password` for `mechanism`.
fn credential(mechanism: ScramMechanism, password: &str) -> ScramCredential {
    let salt = uuid::Uuid::new_v4().into_bytes();
    let (stored_key, server_key) = match mechanism {
        ScramMechanism::Scram256 => scram_keys!(Sha256, password, &salt),
        ScramMechanism::Scram512 => scram_keys!(Sha512, password, &salt),
    };
    ScramCredential {
        salt: Bytes::copy_from_slice(&salt),
        iterations: ITERATIONS as i32,
        stored_key: Bytes::from(stored_key),
        server_key: Bytes::from(server_key),
    }
}
