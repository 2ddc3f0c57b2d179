//! The request handler of one sandbox's server: local answers first, then
//! the upstreams. hickory's server loop has already parsed the request (a
//! malformed one got FORMERR or was dropped there) and frames the reply.

use std::{
    iter,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
};

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Message, Metadata, OpCode, ResponseCode},
    rr::Record,
};
use hickory_server::{
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tracing::warn;

use super::{forward::forward, lookup::local_answer, Names};

/// Answers the queries of one container.
pub(super) struct SandboxHandler {
    /// The container the sandbox belongs to: it is the asker of every query.
    container_id: String,
    names: Arc<RwLock<Arc<Names>>>,
    upstreams: Arc<[SocketAddr]>,
}

/// The sections of a reply.
#[derive(Default)]
struct Sections<'a> {
    answers: &'a [Record],
    authorities: &'a [Record],
    additionals: &'a [Record],
}

#[async_trait::async_trait]
impl RequestHandler for SandboxHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        if request.metadata.op_code != OpCode::Query {
            return reply_error(request, response, ResponseCode::NotImp).await;
        }
        // Exactly one question, as every resolver sends.
        let Ok(info) = request.request_info() else {
            return reply_error(request, response, ResponseCode::FormErr).await;
        };
        let query = info.query.original();
        let local = local_answer(&self.snapshot(), &self.container_id, query);
        match local {
            Some(answers) => {
                let metadata = reply_metadata(request, ResponseCode::NoError);
                let sections = Sections {
                    answers: &answers,
                    ..Sections::default()
                };
                reply(request, response, metadata, sections).await
            }
            None => self.forward(request, response).await,
        }
    }
}

impl SandboxHandler {
    pub(super) fn new(
        container_id: String,
        names: Arc<RwLock<Arc<Names>>>,
        upstreams: Arc<[SocketAddr]>,
    ) -> Self {
        Self {
            container_id,
            names,
            upstreams,
        }
    }

    /// The current table; `Dns::update` swaps it without disturbing queries
    /// in flight.
    fn snapshot(&self) -> Arc<Names> {
        self.names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Relays the upstreams' answer, or SERVFAIL when none answered.
    async fn forward<R: ResponseHandler>(&self, request: &Request, response: R) -> ResponseInfo {
        let Some(answer) = forward(&upstream_query(request), &self.upstreams).await else {
            return reply_error(request, response, ResponseCode::ServFail).await;
        };
        // The upstream's header (rcode, flags) under the client's own id.
        let mut metadata = answer.metadata;
        metadata.id = request.metadata.id;
        let sections = Sections {
            answers: &answer.answers,
            authorities: &answer.authorities,
            additionals: &answer.additionals,
        };
        reply(request, response, metadata, sections).await
    }
}

/// The client's question, under a fresh random id so that answers to other
/// clients (or forged ones) cannot be taken for its answer.
fn upstream_query(request: &Request) -> Message {
    let mut query = Message::query();
    query.metadata.recursion_desired = request.metadata.recursion_desired;
    query.metadata.checking_disabled = request.metadata.checking_disabled;
    query.add_queries(
        request
            .queries
            .queries()
            .iter()
            .map(|q| q.original().clone()),
    );
    if let Some(edns) = reply_edns(request) {
        query.set_edns(edns);
    }
    query
}

/// The header of our own replies to `request`.
fn reply_metadata(request: &Request, code: ResponseCode) -> Metadata {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    // We recurse for the client (by forwarding), as Docker's server says.
    metadata.recursion_available = true;
    metadata.response_code = code;
    metadata
}

/// EDNS for the reply when the client used it (RFC 6891 6.1.1): it carries
/// the client's payload size, which also bounds our UDP reply (hickory
/// truncates to it). Upstream OPT records are hop-by-hop and not relayed.
fn reply_edns(request: &Request) -> Option<Edns> {
    let asked = request.edns.as_ref()?;
    let mut edns = Edns::new();
    edns.set_max_payload(request.max_payload());
    edns.set_dnssec_ok(asked.flags().dnssec_ok);
    Some(edns)
}

async fn reply_error<R: ResponseHandler>(
    request: &Request,
    response: R,
    code: ResponseCode,
) -> ResponseInfo {
    let metadata = reply_metadata(request, code);
    reply(request, response, metadata, Sections::default()).await
}

/// Sends a reply echoing the client's question.
async fn reply<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    metadata: Metadata,
    sections: Sections<'_>,
) -> ResponseInfo {
    let edns = reply_edns(request);
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(edns) = &edns {
        builder.edns(edns);
    }
    let message = builder.build(
        metadata,
        sections.answers,
        sections.authorities,
        iter::empty(),
        sections.additionals,
    );
    match response.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, src = %request.src(), "cannot send DNS reply");
            let metadata = reply_metadata(request, ResponseCode::ServFail);
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}
