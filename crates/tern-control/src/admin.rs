//! `tern.v1.QueueAdmin`: status, shape, listing, one message, and the repair actions.
//!
//! Listing filters the queue offers (domain, state, sender, recipient) are applied by the queue; the rest
//! (minimum attempts, age, tag) here, page by page. The shape and filter-based actions with more than a
//! domain walk the job list; they stop after [`SCAN_BUDGET`] jobs. The status needs no walk.
//!
//! The repair actions are in [`crate::actions`], finished messages and FindMessages in [`crate::history`],
//! routes in [`crate::routes`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tern_core::time::now_ms;
use tern_proto::v1 as pb;
use tern_proto::v1::queue_admin_server::QueueAdmin;
use tern_queue::{
    BOUNCE_SCHEDULE, Cursor, HistoryStore, Job, JobState, ListFilter, Queue, QueueError, RouteStore,
};
use tonic::{Request, Response, Status};

use crate::actions::Action;
use crate::convert::{self, Filter, invalid, queue_status};
use crate::shape::{self, Shape};

/// The most jobs one call walks (shape, filtered actions).
pub const SCAN_BUDGET: usize = 1_000_000;
/// Jobs per page when walking the list.
const PAGE: usize = 1000;
/// The default and largest page of ListMessages.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;
/// The default number of domains in status and shape.
const DEFAULT_TOP: usize = 10;

/// The QueueAdmin service over a queue. Authentication is done by the server's interceptor.
#[derive(Clone)]
pub struct AdminService {
    pub(crate) queue: Arc<dyn Queue>,
    /// Messages' history (finished messages, FindMessages); `None`: those answer FAILED_PRECONDITION.
    pub(crate) history: Option<Arc<dyn HistoryStore>>,
    /// Domain routes; `None`: the route calls answer FAILED_PRECONDITION.
    pub(crate) routes: Option<Arc<dyn RouteStore>>,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

impl AdminService {
    /// The service over `queue`.
    pub fn new(queue: Arc<dyn Queue>) -> Self {
        AdminService {
            queue,
            history: None,
            routes: None,
        }
    }

    /// The service also serving finished messages and FindMessages from `history`, and routes from
    /// `routes` (both normally the queue's own store).
    pub fn with_stores(mut self, history: Arc<dyn HistoryStore>, routes: Arc<dyn RouteStore>) -> Self {
        self.history = Some(history);
        self.routes = Some(routes);
        self
    }

    /// The domains suspended now.
    pub(crate) async fn suspended_domains(&self) -> Result<HashSet<String>, Status> {
        Ok(self
            .queue
            .suspensions()
            .await
            .map_err(queue_status)?
            .into_iter()
            .map(|s| s.domain)
            .collect())
    }

    /// Calls `each` for every job passing `filter`, up to `budget` jobs looked at. Returns whether the walk
    /// reached the end.
    pub(crate) async fn walk(
        &self,
        filter: &Filter,
        budget: usize,
        mut each: impl FnMut(Job),
    ) -> Result<bool, Status> {
        let now = now_ms();
        let suspended = self.suspended_domains().await?;
        let mut cursor = None;
        let mut seen = 0usize;
        loop {
            let page = self
                .queue
                .list(&filter.list, cursor, PAGE)
                .await
                .map_err(queue_status)?;
            seen += page.items.len();
            for job in page.items {
                if filter.matches_rest(&job, now, &suspended) {
                    each(job);
                }
            }
            match page.next {
                Some(next) if seen < budget => cursor = Some(next),
                Some(_) => return Ok(false),
                None => return Ok(true),
            }
        }
    }

    /// The last error of one of `domain`'s deferred jobs.
    async fn last_error(&self, domain: &str) -> Result<String, Status> {
        let filter = ListFilter {
            domain: Some(domain.to_string()),
            state: Some(JobState::Deferred),
            ..Default::default()
        };
        let page = self.queue.list(&filter, None, 50).await.map_err(queue_status)?;
        Ok(page
            .items
            .iter()
            .filter(|j| j.last_error.is_some())
            .max_by_key(|j| j.next_attempt_ms)
            .and_then(|j| j.last_error.clone())
            .unwrap_or_default())
    }
}

fn top_n(n: u32) -> usize {
    if n == 0 { DEFAULT_TOP } else { n as usize }
}

pub(crate) fn check_domain(field: &str, d: &str) -> Result<String, Status> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.contains(['@', ' ', '#', '/', ':']) {
        return Err(invalid(field, format!("{d:?} is not a domain")));
    }
    Ok(d)
}

#[tonic::async_trait]
impl QueueAdmin for AdminService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let top = top_n(request.get_ref().top_domains);
        let counts = self.queue.counts().await.map_err(queue_status)?;
        let mut depths = self.queue.domain_depths().await.map_err(queue_status)?;
        // Jobs of a suspended domain are not due, whatever their due time says.
        let due_now: u64 = depths
            .iter()
            .filter(|d| d.suspension.is_none())
            .map(|d| d.due)
            .sum();
        let suspended: u64 = depths
            .iter()
            .filter(|d| d.suspension.is_some())
            .map(|d| d.total)
            .sum();
        let now = now_ms();
        // Message ids start with their creation time, so the queue knows the oldest without a scan: `ternctl
        // queue top` asks every second, whatever the depth.
        let oldest = counts.oldest_message_ms;
        let oldest_age_exact = true;
        depths.retain(|d| d.domain != BOUNCE_SCHEDULE && (d.total > 0 || d.suspension.is_some()));
        depths.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
        depths.truncate(top);
        let mut domains = Vec::with_capacity(depths.len());
        for d in depths {
            domains.push(pb::DomainStatus {
                last_error: self.last_error(&d.domain).await?,
                in_flight: d.total.saturating_sub(d.waiting).saturating_sub(d.held),
                held: d.held,
                depth: d.total,
                due: if d.suspension.is_some() { 0 } else { d.due },
                active_claims: d.active_claims,
                suspension: d.suspension.as_ref().map(convert::suspension),
                domain: d.domain,
            });
        }
        let mut recent = Vec::new();
        for secs in [60u64, 300, 3600] {
            let s = self
                .queue
                .recent_stats(Duration::from_secs(secs))
                .await
                .map_err(queue_status)?;
            recent.push(pb::RecentStats {
                window_seconds: secs,
                delivered: s.delivered,
                deferred: s.deferred,
                failed: s.failed,
                expired: s.expired,
            });
        }
        Ok(Response::new(pb::GetStatusResponse {
            totals: Some(pb::QueueTotals {
                total: counts.total,
                scheduled: counts.queued + counts.deferred,
                due_now,
                in_flight: counts.in_flight,
                deferred: counts.deferred,
                suspended,
                suspended_domains: counts.suspended_domains,
                bounce_pending: counts.bounce_pending,
                queued: counts.queued,
                held: counts.held,
            }),
            oldest_age_ms: oldest.map_or(0, |o| now.saturating_sub(o)),
            domains,
            recent,
            oldest_age_exact,
        }))
    }

    async fn get_shape(
        &self,
        request: Request<pb::GetShapeRequest>,
    ) -> Result<Response<pb::GetShapeResponse>, Status> {
        let top = top_n(request.get_ref().top_domains);
        let by_sender = match request.get_ref().by.trim().to_ascii_lowercase().as_str() {
            "" | "domain" => false,
            "sender" => true,
            other => return Err(invalid("by", format!("{other:?} is not domain or sender"))),
        };
        let now = now_ms();
        let mut shape = Shape::new();
        let complete = self
            .walk(&Filter::default(), SCAN_BUDGET, |job| {
                if by_sender {
                    let sender = convert::sender_text(&job.envelope.sender);
                    shape.add(&sender, job.first_queued_ms, now);
                } else {
                    shape.add(&job.domain, job.first_queued_ms, now);
                }
            })
            .await?;
        let (rows, total) = shape.finish(top);
        let row = |r: shape::Row| pb::ShapeRow {
            domain: r.domain,
            total: r.total,
            counts: r.counts.to_vec(),
        };
        Ok(Response::new(pb::GetShapeResponse {
            buckets: shape::labels(),
            rows: rows.into_iter().map(row).collect(),
            total: Some(row(total)),
            complete,
        }))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let req = request.into_inner();
        let filter = Filter::from_proto(req.filter.as_ref())?;
        let limit = match req.limit as usize {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => return Err(invalid("limit", format!("{n} is more than {MAX_LIMIT}"))),
            n => n,
        };
        let mut cursor = (!req.cursor.is_empty()).then(|| Cursor(req.cursor.clone()));
        let now = now_ms();
        let suspended = self.suspended_domains().await?;
        let mut jobs = Vec::new();
        let mut seen = 0usize;
        let budget = limit.saturating_mul(10).max(10_000);
        loop {
            // Never ask for more than fits, so that no job of a page is dropped.
            let page = self
                .queue
                .list(&filter.list, cursor.clone(), limit - jobs.len())
                .await
                .map_err(|e| match e {
                    QueueError::InvalidMessage(m) => invalid("cursor", m),
                    other => queue_status(other),
                })?;
            seen += page.items.len();
            jobs.extend(
                page.items
                    .iter()
                    .filter(|j| filter.matches_rest(j, now, &suspended))
                    .map(|j| convert::job_summary_in(j, &suspended)),
            );
            cursor = page.next;
            if cursor.is_none() || jobs.len() >= limit || seen >= budget {
                break;
            }
        }
        Ok(Response::new(pb::ListMessagesResponse {
            jobs,
            next_cursor: cursor.map(|c| c.0).unwrap_or_default(),
        }))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        self.message(request.into_inner()).await
    }

    async fn retry_now(
        &self,
        request: Request<pb::ActionRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(request, Action::Retry).await
    }

    async fn bounce(
        &self,
        request: Request<pb::ActionRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(request, Action::Bounce).await
    }

    async fn delete(
        &self,
        request: Request<pb::ActionRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(request, Action::Delete).await
    }

    async fn suspend_domain(
        &self,
        request: Request<pb::SuspendDomainRequest>,
    ) -> Result<Response<pb::SuspendDomainResponse>, Status> {
        let key = crate::actions::key_name(&request);
        let req = request.into_inner();
        let domain = check_domain("domain", &req.domain)?;
        let now = now_ms();
        let until =
            (req.duration_seconds > 0).then(|| now.saturating_add(req.duration_seconds.saturating_mul(1000)));
        let reason = if req.reason.trim().is_empty() {
            "suspended by an operator".to_string()
        } else {
            req.reason.trim().to_string()
        };
        self.queue
            .suspend(&domain, until, &reason)
            .await
            .map_err(queue_status)?;
        tracing::info!(
            domain = %domain,
            until_ms = until.unwrap_or(0),
            reason = %reason,
            key = %key,
            "control: domain suspended"
        );
        let suspension = self
            .queue
            .suspensions()
            .await
            .map_err(queue_status)?
            .into_iter()
            .find(|s| s.domain == domain)
            .map(|s| convert::suspension(&s))
            .unwrap_or(pb::Suspension {
                domain,
                reason,
                since_ms: now,
                until_ms: until.unwrap_or(0),
            });
        Ok(Response::new(pb::SuspendDomainResponse {
            suspension: Some(suspension),
        }))
    }

    async fn resume_domain(
        &self,
        request: Request<pb::ResumeDomainRequest>,
    ) -> Result<Response<pb::ResumeDomainResponse>, Status> {
        let domain = check_domain("domain", &request.get_ref().domain)?;
        let was_suspended = self.queue.resume(&domain).await.map_err(queue_status)?;
        let key = crate::actions::key_name(&request);
        tracing::info!(domain = %domain, was_suspended, key = %key, "control: domain resumed");
        Ok(Response::new(pb::ResumeDomainResponse { was_suspended }))
    }

    async fn list_suspensions(
        &self,
        _request: Request<pb::ListSuspensionsRequest>,
    ) -> Result<Response<pb::ListSuspensionsResponse>, Status> {
        let mut list = self.queue.suspensions().await.map_err(queue_status)?;
        list.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(Response::new(pb::ListSuspensionsResponse {
            suspensions: list.iter().map(convert::suspension).collect(),
        }))
    }

    async fn hold(
        &self,
        request: Request<pb::ActionRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(request, Action::Hold).await
    }

    async fn release(
        &self,
        request: Request<pb::ActionRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        self.act(request, Action::Release).await
    }

    async fn find_messages(
        &self,
        request: Request<pb::FindMessagesRequest>,
    ) -> Result<Response<pb::FindMessagesResponse>, Status> {
        self.find(request.into_inner()).await
    }

    async fn route_domain(
        &self,
        request: Request<pb::RouteDomainRequest>,
    ) -> Result<Response<pb::RouteDomainResponse>, Status> {
        let key = crate::actions::key_name(&request);
        self.route(request.into_inner(), &key).await
    }

    async fn unroute_domain(
        &self,
        request: Request<pb::UnrouteDomainRequest>,
    ) -> Result<Response<pb::UnrouteDomainResponse>, Status> {
        let key = crate::actions::key_name(&request);
        self.unroute(request.into_inner(), &key).await
    }

    async fn list_routes(
        &self,
        _request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        self.list_routes_now().await
    }
}
