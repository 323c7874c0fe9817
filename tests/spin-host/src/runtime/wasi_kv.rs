//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch), which Spin 3 serves beside `fermyon:spin/key-value`
//! from the same stores: a bucket opened by label is the label's store. The dispatch follows Spin's
//! (spinframework/spin `crates/factor-key-value/src/host.rs`): a listing with a cursor is refused, empty
//! batches never reach the store, and a failed swap hands back a fresh CAS on the same key on which
//! `current` has already been called. The stores themselves: [`crate::kv`].

use anyhow::Result;
use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::Ctx;
use crate::kv::{Cas, KvStore, SwapError};

fn error(err: anyhow::Error) -> store::Error {
    store::Error::Other(format!("{err:#}"))
}

impl Ctx {
    fn bucket(&self, bucket: &Resource<KvStore>) -> Result<KvStore> {
        Ok(self.table.get(bucket)?.clone())
    }
}

impl store::Host for Ctx {
    async fn open(
        &mut self,
        identifier: String,
    ) -> Result<Result<Resource<KvStore>, store::Error>> {
        if !self.component.kv_labels.contains(&identifier) {
            return Ok(Err(store::Error::AccessDenied));
        }
        let Some(bucket) = self.component.stores.get(&identifier).cloned() else {
            return Ok(Err(store::Error::NoSuchStore));
        };
        if let Err(err) = bucket.connect().await {
            return Ok(Err(error(err)));
        }
        Ok(Ok(self.table.push(bucket)?))
    }
}

impl store::HostBucket for Ctx {
    async fn get(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(self.bucket(&bucket)?.get(&key).await.map_err(error))
    }

    async fn set(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<Result<(), store::Error>> {
        Ok(self.bucket(&bucket)?.set(&key, &value).await.map_err(error))
    }

    async fn delete(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> Result<Result<(), store::Error>> {
        Ok(self.bucket(&bucket)?.delete(&key).await.map_err(error))
    }

    async fn exists(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> Result<Result<bool, store::Error>> {
        Ok(self.bucket(&bucket)?.exists(&key).await.map_err(error))
    }

    /// Spin answers every key at once, with no cursor, and refuses a cursor.
    async fn list_keys(
        &mut self,
        bucket: Resource<KvStore>,
        cursor: Option<String>,
    ) -> Result<Result<store::KeyResponse, store::Error>> {
        if cursor.is_some() {
            return Ok(Err(store::Error::Other(
                "list_keys: cursor not supported".into(),
            )));
        }
        Ok(self
            .bucket(&bucket)?
            .keys()
            .await
            .map(|keys| store::KeyResponse { keys, cursor: None })
            .map_err(error))
    }

    async fn drop(&mut self, bucket: Resource<KvStore>) -> Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Ctx {
    async fn increment(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
        delta: i64,
    ) -> Result<Result<i64, store::Error>> {
        Ok(self
            .bucket(&bucket)?
            .increment(&key, delta)
            .await
            .map_err(error))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> Result<Result<(), atomics::CasError>> {
        let outcome = self.table.get(&cas)?.swap(&value).await;
        let old = self.table.delete(cas)?;
        Ok(match outcome {
            Ok(()) => Ok(()),
            // Spin hands back a fresh CAS on the same key, `current` already called on it, to retry with.
            Err(SwapError::Failed) => {
                let fresh = match old.store().cas(old.key()).await {
                    Ok(fresh) => fresh,
                    Err(err) => return Ok(Err(atomics::CasError::StoreError(error(err)))),
                };
                if let Err(err) = fresh.current().await {
                    return Ok(Err(atomics::CasError::StoreError(error(err))));
                }
                Err(atomics::CasError::CasFailed(self.table.push(fresh)?))
            }
            Err(SwapError::Store(err)) => Err(atomics::CasError::StoreError(error(err))),
        })
    }
}

impl atomics::HostCas for Ctx {
    async fn new(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> Result<Result<Resource<Cas>, store::Error>> {
        let cas = match self.bucket(&bucket)?.cas(&key).await {
            Ok(cas) => cas,
            Err(err) => return Ok(Err(error(err))),
        };
        Ok(Ok(self.table.push(cas)?))
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(self.table.get(&cas)?.current().await.map_err(error))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for Ctx {
    async fn get_many(
        &mut self,
        bucket: Resource<KvStore>,
        keys: Vec<String>,
    ) -> Result<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
        let bucket = self.bucket(&bucket)?;
        if keys.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        Ok(bucket.get_many(keys).await.map_err(error))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<KvStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<Result<(), store::Error>> {
        let bucket = self.bucket(&bucket)?;
        if key_values.is_empty() {
            return Ok(Ok(()));
        }
        Ok(bucket.set_many(key_values).await.map_err(error))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<KvStore>,
        keys: Vec<String>,
    ) -> Result<Result<(), store::Error>> {
        let bucket = self.bucket(&bucket)?;
        if keys.is_empty() {
            return Ok(Ok(()));
        }
        Ok(bucket.delete_many(keys).await.map_err(error))
    }
}
