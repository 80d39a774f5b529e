// Added for Lambda (not in tansu 0.6.0): the EndTxn service, so that a
// transactional producer can commit or abort. The storage engines already
// implement `Storage::txn_end` (the control batches and the transaction
// state); 0.6.0 only lacked the service and its route.

use rama::{Context, Service};
use tansu_sans_io::{ApiKey, EndTxnRequest, EndTxnResponse};
use tracing::instrument;

use crate::{Error, Result, Storage};

/// An [`EndTxnRequest`] [`Service`]: commits or aborts a transaction.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct EndService;

impl ApiKey for EndService {
    const KEY: i16 = EndTxnRequest::KEY;
}

impl<G> Service<G, EndTxnRequest> for EndService
where
    G: Storage,
{
    type Response = EndTxnResponse;
    type Error = Error;

    #[instrument(skip(ctx, req))]
    async fn serve(&self, ctx: Context<G>, req: EndTxnRequest) -> Result<Self::Response, Self::Error> {
        ctx.state()
            .txn_end(
                req.transactional_id.as_str(),
                req.producer_id,
                req.producer_epoch,
                req.committed,
            )
            .await
            .map(|error_code| {
                EndTxnResponse::default()
                    .throttle_time_ms(0)
                    .error_code(error_code.into())
            })
    }
}
