//! Trace spans of instance operations: `instance.create`, `.start`, `.stop`, `.restart`,
//! `.delete`, `.evict` (the seed's `instance.name` and `model.path`, and `backend.type`), with
//! their steps as children — `systemd.job` (the unit job and its result) and
//! `instance.wait_ready` (from the started unit to a ready, or failed, instance).
//! Nothing is made unless traces are on and the trace is sampled (`crate::telemetry`).

use super::spec::InstanceOptions;
use super::{OpError, State, Supervisor};
use crate::systemd::units::UnitError;
use crate::telemetry::{Attr, OpSpan};
use opentelemetry::trace::SpanKind;
use std::future::Future;

fn attrs(name: &str, options: Option<&InstanceOptions>) -> Vec<Attr> {
    let mut a = vec![Attr::new("instance.name", name.to_string())];
    if let Some(o) = options {
        a.push(Attr::new("backend.type", o.backend_type.as_str()));
        if let Some(m) = &o.backend_options.model {
            a.push(Attr::new("model.path", m.clone()));
        }
    }
    a
}

impl Supervisor {
    /// The span of operation `op` on instance `name` (its spec read from the table, or
    /// `options` for one being created).
    pub(super) fn op_span(
        &self,
        op: &'static str,
        name: &str,
        options: Option<&InstanceOptions>,
    ) -> OpSpan {
        if !crate::telemetry::enabled() {
            return OpSpan::default();
        }
        // The attributes are read under the table's lock: no copy of the spec.
        let attrs = match options {
            Some(o) => attrs(name, Some(o)),
            None => {
                let t = self.table();
                attrs(name, t.instances.get(name).map(|e| &e.spec.options))
            }
        };
        OpSpan::start(op, SpanKind::Internal, attrs)
    }

    /// Runs `op` as the span's work and ends the span with its result.
    pub(super) async fn traced<T, F>(&self, span: OpSpan, op: F) -> Result<T, OpError>
    where
        F: Future<Output = Result<T, OpError>>,
    {
        let r = span.run(op).await;
        span.finish(&r);
        r
    }
}

/// A systemd job (`start` or `stop` of `unit`) as a child span, with its result.
pub(super) async fn job<F>(kind: &'static str, unit: &str, work: F) -> Result<(), UnitError>
where
    F: Future<Output = Result<(), UnitError>>,
{
    let span = OpSpan::start(
        "systemd.job",
        SpanKind::Client,
        vec![
            Attr::new("systemd.unit", unit.to_string()),
            Attr::new("systemd.job.type", kind),
        ],
    );
    let r = span.run(work).await;
    span.set(Attr::new(
        "systemd.job.result",
        match &r {
            Ok(()) => "done".to_string(),
            Err(e) => e.to_string(),
        },
    ));
    span.finish(&r);
    r
}

/// After a start's job, when the start is traced: an `instance.wait_ready` span, kept with the
/// instance's entry and ended by the reading that finds it ready, failed or stopped
/// (`Entry::observe`), so the operation returns as it always did.
pub(super) fn wait_ready_span(name: &str) -> Option<OpSpan> {
    let span = OpSpan::start(
        "instance.wait_ready",
        SpanKind::Internal,
        vec![Attr::new("instance.name", name.to_string())],
    );
    span.is_recording().then_some(span)
}

/// Ends a waiting `instance.wait_ready` span once `state` settles it.
pub(super) fn settle_wait_ready(slot: &mut Option<OpSpan>, state: State) {
    match state {
        State::Ready => *slot = None,
        State::Failed | State::Stopped => {
            if let Some(span) = slot.take() {
                span.fail(format!(
                    "the instance is {} after its start",
                    state.as_str()
                ));
            }
        }
        _ => {}
    }
}
