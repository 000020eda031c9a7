//! The engine core: one thread, one loop of schedule -> execute -> update.
//!
//! Requests arrive and leave over channels between steps; nothing outside this thread
//! touches the scheduler or the model.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use ferrollm_core::{
    EngineCoreOutput, FinishReason, Request, RequestId, Scheduler, SchedulerStats, StructuredOutputGrammar,
};

use crate::runner::ModelRunner;

pub enum CoreRequest {
    /// A request, with its compiled grammar when its output is constrained.
    Add(Box<Request>, Option<Box<dyn StructuredOutputGrammar>>),
    /// Ends requests early: a client abort, or a stop string the detokenizer saw.
    Finish(Vec<RequestId>, FinishReason),
    Shutdown,
}

pub enum CoreEvent {
    Outputs(Vec<EngineCoreOutput>, SchedulerStats),
    /// The scheduler refused a request the frontend let through.
    Rejected(RequestId, String),
}

pub struct EngineCore {
    pub scheduler: Scheduler,
    pub runner: ModelRunner,
}

impl EngineCore {
    pub fn new(scheduler: Scheduler, runner: ModelRunner) -> EngineCore {
        EngineCore { scheduler, runner }
    }

    /// One step: schedule, run the model, fold the results back. Empty when nothing is runnable.
    pub fn step(&mut self) -> Vec<EngineCoreOutput> {
        let out = self.scheduler.schedule();
        if out.is_empty() {
            return Vec::new();
        }
        let result = self.runner.execute(&out);
        self.scheduler.update_from_output(&out, &result)
    }

    /// Serves requests from `rx` until `Shutdown` or until every sender is gone.
    pub fn run(mut self, rx: Receiver<CoreRequest>, tx: Sender<CoreEvent>) {
        // Publish capacity at once, so gauges are right before the first request.
        let _ = tx.send(CoreEvent::Outputs(Vec::new(), self.scheduler.stats()));
        loop {
            // Block only when idle, so new requests join between steps without delaying them.
            let first = if self.scheduler.has_unfinished_requests() {
                rx.try_recv().ok()
            } else {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut msgs: Vec<CoreRequest> = first.into_iter().collect();
            msgs.extend(rx.try_iter());
            for m in msgs {
                match m {
                    CoreRequest::Add(req, grammar) => {
                        let id = req.id.clone();
                        if let Err(e) = self.scheduler.add_request_with_grammar(*req, grammar) {
                            let _ = tx.send(CoreEvent::Rejected(id, e.to_string()));
                        }
                    }
                    CoreRequest::Finish(ids, reason) => self.scheduler.finish_requests(&ids, reason),
                    CoreRequest::Shutdown => return,
                }
            }
            if !self.scheduler.has_unfinished_requests() {
                let _ = tx.send(CoreEvent::Outputs(Vec::new(), self.scheduler.stats()));
                continue;
            }
            let outputs = self.step();
            if tx.send(CoreEvent::Outputs(outputs, self.scheduler.stats())).is_err() {
                return;
            }
        }
    }
}
