//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas can run and
//! only one reconciles.
//!
//! The holder renews the Lease every `renew_interval`; a candidate takes it over only once it has
//! not been renewed for `lease_duration`. Writes carry the Lease's `resourceVersion`, so of two
//! candidates racing for an expired Lease the API server lets exactly one win (the other gets a
//! 409 and stays a candidate). A leader that cannot renew within `renew_deadline` (shorter than the
//! lease duration) stops reconciling before anyone else may start.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// Lease timing.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease not renewed stays valid.
    pub lease_duration: Duration,
    /// How often the leader renews, and a candidate retries.
    pub renew_interval: Duration,
    /// A leader that could not renew for this long stops leading.
    pub renew_deadline: Duration,
}

impl LeaseSettings {
    /// Settings with the usual ratios: renew every duration/5, give up after 2/3 of it.
    pub fn new(
        name: String,
        namespace: String,
        identity: String,
        lease_duration: Duration,
    ) -> Self {
        Self {
            name,
            namespace,
            identity,
            renew_interval: lease_duration / 5,
            renew_deadline: lease_duration * 2 / 3,
            lease_duration,
        }
    }
}

/// What a replica does with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a valid Lease.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// Decides from the Lease's spec (`None`: no Lease yet).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match last {
        Some(MicroTime(t)) if t.saturating_add(duration).is_ok_and(|end| end > now) => {
            Decision::Follow {
                holder: holder.to_string(),
            }
        }
        _ => Decision::Acquire,
    }
}

/// The Lease spec after `decision` (only for `Acquire` and `Renew`).
pub fn next_spec(
    previous: Option<&LeaseSpec>,
    decision: &Decision,
    settings: &LeaseSettings,
    now: Timestamp,
) -> LeaseSpec {
    let prev = previous.cloned().unwrap_or_default();
    let seconds = i32::try_from(settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    match decision {
        Decision::Renew => LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(seconds),
            ..prev
        },
        _ => LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(match &prev.holder_identity {
                Some(h) if !h.is_empty() && *h != settings.identity => {
                    prev.lease_transitions.unwrap_or(0) + 1
                }
                _ => prev.lease_transitions.unwrap_or(0),
            }),
            ..prev
        },
    }
}

/// Holds or waits for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaderElector {
    /// An elector over the Lease named in `settings`.
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// One round: acquires or renews when allowed. `Ok(true)` when we hold the Lease now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.settings.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.settings.identity,
            now,
        );
        if let Decision::Follow { holder } = &decision {
            tracing::debug!(%holder, "lease held by another replica");
            return Ok(false);
        }
        let spec = next_spec(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &decision,
            &self.settings,
            now,
        );
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Another replica wrote first (409 conflict on replace, 409 exists on create).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown), so another replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.settings.name).await?
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.settings.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            spec.acquire_time = None;
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await?;
        }
        Ok(())
    }

    /// Runs `work` whenever this replica leads, and stops it when leadership is lost; returns
    /// when `shutdown` resolves (releasing the Lease if held).
    pub async fn run<F, Fut>(self, work: F, shutdown: impl Future<Output = ()>)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::pin!(shutdown);
        loop {
            // Candidate.
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "lease: could not read or write"),
                }
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(self.settings.renew_interval) => {}
                }
            }
            info!(identity = %self.settings.identity, lease = %self.settings.name, "leading");
            let task = tokio::spawn(work());
            let mut last_renew = Instant::now();
            // Leader.
            let stopping = loop {
                tokio::select! {
                    () = &mut shutdown => break true,
                    () = tokio::time::sleep(self.settings.renew_interval) => {}
                }
                match self.try_acquire_or_renew().await {
                    Ok(true) => last_renew = Instant::now(),
                    Ok(false) => {
                        warn!("lease taken by another replica");
                        break false;
                    }
                    Err(e) => warn!(error = %e, "lease: renew failed"),
                }
                if last_renew.elapsed() > self.settings.renew_deadline {
                    warn!("lease not renewed within the deadline");
                    break false;
                }
            };
            task.abort();
            if stopping {
                if let Err(e) = self.release().await {
                    warn!(error = %e, "lease: release failed");
                }
                return;
            }
            info!("stopped leading; back to candidate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(renewed - 100))),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    fn settings() -> LeaseSettings {
        LeaseSettings::new(
            "kvoperator".into(),
            "ops".into(),
            "me".into(),
            Duration::from_secs(15),
        )
    }

    #[test]
    fn decisions_follow_holder_and_expiry() {
        let table = [
            (None, 1000, Decision::Acquire),
            (Some(lease(None, 990, 15)), 1000, Decision::Acquire),
            (Some(lease(Some(""), 990, 15)), 1000, Decision::Acquire),
            (Some(lease(Some("me"), 900, 15)), 1000, Decision::Renew),
            (
                Some(lease(Some("other"), 990, 15)),
                1000,
                Decision::Follow {
                    holder: "other".into(),
                },
            ),
            (
                Some(lease(Some("other"), 990, 15)),
                1004,
                Decision::Follow {
                    holder: "other".into(),
                },
            ),
            (Some(lease(Some("other"), 990, 15)), 1005, Decision::Acquire),
            (Some(lease(Some("other"), 990, 15)), 2000, Decision::Acquire),
        ];
        for (spec, now, want) in table {
            assert_eq!(
                decide(spec.as_ref(), "me", at(now)),
                want,
                "{spec:?} at {now}"
            );
        }
    }

    #[test]
    fn a_lease_without_times_is_expired() {
        let spec = LeaseSpec {
            holder_identity: Some("other".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(decide(Some(&spec), "me", at(5)), Decision::Acquire);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let s = settings();
        let prev = lease(Some("other"), 900, 15);
        let took = next_spec(Some(&prev), &Decision::Acquire, &s, at(1000));
        assert_eq!(took.holder_identity.as_deref(), Some("me"));
        assert_eq!(took.lease_transitions, Some(4));
        assert_eq!(took.acquire_time, Some(MicroTime(at(1000))));
        assert_eq!(took.lease_duration_seconds, Some(15));

        let renewed = next_spec(Some(&took), &Decision::Renew, &s, at(1003));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(1003))));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(1000))));
        assert_eq!(renewed.lease_transitions, Some(4));

        let fresh = next_spec(None, &Decision::Acquire, &s, at(1));
        assert_eq!(fresh.lease_transitions, Some(0));
    }

    #[test]
    fn the_leader_gives_up_before_anyone_may_take_over() {
        let s = settings();
        assert!(s.renew_interval < s.renew_deadline);
        assert!(s.renew_deadline < s.lease_duration);
    }

    mod mocked {
        use super::*;
        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use serde_json::{Value, json};

        type TestResult = Result<(), Box<dyn std::error::Error>>;

        async fn answer(
            handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
            method: Method,
            status: StatusCode,
            body: Value,
        ) -> Result<Value, Box<dyn std::error::Error>> {
            let Some((req, send)) = handle.next_request().await else {
                return Err("no request".into());
            };
            assert_eq!(req.method(), method);
            assert!(
                req.uri()
                    .path()
                    .starts_with("/apis/coordination.k8s.io/v1/namespaces/ops/leases")
            );
            let bytes = req.into_body().collect_bytes().await?;
            let sent = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)?
            };
            let reply = if body.is_null() { sent.clone() } else { body };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply)?))?,
            );
            Ok(sent)
        }

        fn not_found() -> Value {
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not found"})
        }

        fn conflict() -> Value {
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "reason": "Conflict", "code": 409, "message": "the object has been modified"})
        }

        #[tokio::test]
        async fn creates_an_absent_lease_and_loses_a_write_race() -> TestResult {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let elector = LeaderElector::new(kube::Client::new(service, "default"), settings());
            let round = tokio::spawn(async move {
                let first = elector.try_acquire_or_renew().await;
                let second = elector.try_acquire_or_renew().await;
                (first, second)
            });
            // First round: no Lease, create it holding it ourselves.
            answer(&mut handle, Method::GET, StatusCode::NOT_FOUND, not_found()).await?;
            let created =
                answer(&mut handle, Method::POST, StatusCode::CREATED, Value::Null).await?;
            assert_eq!(created["spec"]["holderIdentity"], "me");
            assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
            // Second round: another replica's Lease expired; our takeover write loses the race.
            let expired = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "kvoperator", "namespace": "ops", "resourceVersion": "7"},
                "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15,
                         "renewTime": "2020-01-01T00:00:00.000000Z"}});
            answer(&mut handle, Method::GET, StatusCode::OK, expired).await?;
            let replaced =
                answer(&mut handle, Method::PUT, StatusCode::CONFLICT, conflict()).await?;
            assert_eq!(
                replaced["metadata"]["resourceVersion"], "7",
                "the write is conditional"
            );
            assert_eq!(replaced["spec"]["holderIdentity"], "me");
            let (first, second) = round.await?;
            assert!(first?);
            assert!(!second?);
            Ok(())
        }
    }
}
