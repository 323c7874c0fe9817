//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch), which Spin 3 serves beside `fermyon:spin/key-value`
//! from the same stores: a bucket opened by label is the label's store. The atomics behave as Spin's
//! SQLite store implements them (see [`crate::kv::Cas`]).

use anyhow::Result;
use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::Ctx;
use crate::kv::{Cas, KvStore, SwapError};

fn error(err: anyhow::Error) -> store::Error {
    store::Error::Other(format!("{err:#}"))
}

impl store::Host for Ctx {
    fn open(&mut self, identifier: String) -> Result<Result<Resource<KvStore>, store::Error>> {
        if !self.component.kv_labels.contains(&identifier) {
            return Ok(Err(store::Error::AccessDenied));
        }
        let Some(bucket) = self.component.stores.get(&identifier) else {
            return Ok(Err(store::Error::NoSuchStore));
        };
        Ok(Ok(self.table.push(bucket.clone())?))
    }
}

impl store::HostBucket for Ctx {
    fn get(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(self.table.get(&bucket)?.get(&key).map_err(error))
    }

    fn set(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<Result<(), store::Error>> {
        Ok(self.table.get(&bucket)?.set(&key, &value).map_err(error))
    }

    fn delete(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> Result<Result<(), store::Error>> {
        Ok(self.table.get(&bucket)?.delete(&key).map_err(error))
    }

    fn exists(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> Result<Result<bool, store::Error>> {
        Ok(self.table.get(&bucket)?.exists(&key).map_err(error))
    }

    /// Spin answers every key at once, with no cursor.
    fn list_keys(
        &mut self,
        bucket: Resource<KvStore>,
        _cursor: Option<String>,
    ) -> Result<Result<store::KeyResponse, store::Error>> {
        Ok(self
            .table
            .get(&bucket)?
            .keys()
            .map(|keys| store::KeyResponse { keys, cursor: None })
            .map_err(error))
    }

    fn drop(&mut self, bucket: Resource<KvStore>) -> Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Ctx {
    fn increment(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
        delta: i64,
    ) -> Result<Result<i64, store::Error>> {
        Ok(self
            .table
            .get(&bucket)?
            .increment(&key, delta)
            .map_err(error))
    }

    fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> Result<Result<(), atomics::CasError>> {
        let outcome = self.table.get(&cas)?.swap(&value);
        Ok(match outcome {
            Ok(()) => {
                self.table.delete(cas)?;
                Ok(())
            }
            // Spin hands back a fresh handle on the same key, to retry with.
            Err(SwapError::Failed) => {
                let old = self.table.delete(cas)?;
                let fresh = old.store().cas(old.key());
                Err(atomics::CasError::CasFailed(self.table.push(fresh)?))
            }
            Err(SwapError::Store(err)) => {
                self.table.delete(cas)?;
                Err(atomics::CasError::StoreError(error(err)))
            }
        })
    }
}

impl atomics::HostCas for Ctx {
    fn new(
        &mut self,
        bucket: Resource<KvStore>,
        key: String,
    ) -> Result<Result<Resource<Cas>, store::Error>> {
        let cas = self.table.get(&bucket)?.cas(&key);
        Ok(Ok(self.table.push(cas)?))
    }

    fn current(&mut self, cas: Resource<Cas>) -> Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(self.table.get(&cas)?.current().map_err(error))
    }

    fn drop(&mut self, cas: Resource<Cas>) -> Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for Ctx {
    fn get_many(
        &mut self,
        bucket: Resource<KvStore>,
        keys: Vec<String>,
    ) -> Result<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
        let bucket = self.table.get(&bucket)?;
        Ok(keys
            .into_iter()
            .map(|key| bucket.get(&key).map(|value| (key, value)))
            .collect::<Result<_>>()
            .map_err(error))
    }

    fn set_many(
        &mut self,
        bucket: Resource<KvStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<Result<(), store::Error>> {
        let bucket = self.table.get(&bucket)?;
        Ok(key_values
            .iter()
            .try_for_each(|(key, value)| bucket.set(key, value))
            .map_err(error))
    }

    fn delete_many(
        &mut self,
        bucket: Resource<KvStore>,
        keys: Vec<String>,
    ) -> Result<Result<(), store::Error>> {
        let bucket = self.table.get(&bucket)?;
        Ok(keys
            .iter()
            .try_for_each(|key| bucket.delete(key))
            .map_err(error))
    }
}
