//! Which job may start next: the ready set (every upstream job succeeded), resource
//! slots (each slot a numbered device, so two stages never share GPU 0), the parallelism
//! limit, keep-going and cancellation. Pure bookkeeping: no processes, no I/O, so every
//! rule is unit-tested here and the executor only wires it to a launcher.

use std::collections::{BTreeMap, BTreeSet};

/// What a job needs before it can start.
#[derive(Clone, Debug, Default)]
pub struct JobNeeds {
    pub upstream: Vec<usize>,
    /// Slots per resource, e.g. `gpu = 1`.
    pub resources: BTreeMap<String, u32>,
}

/// The slots a started job holds: for each resource, which numbered slots (device
/// indices for `gpu`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub slots: BTreeMap<String, Vec<usize>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running(Grant),
    Succeeded,
    Failed,
    /// Not run because this (failed) upstream job did not succeed.
    Skipped {
        failed: usize,
    },
}

/// What the executor should do about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its upstream succeeded: resolve it (cached, or start it with [`Scheduler::try_start`]).
    Ready(usize),
    /// It will not run: `failed` (upstream of it) did not succeed.
    Skipped { job: usize, failed: usize },
}

pub struct Scheduler {
    needs: Vec<JobNeeds>,
    phase: Vec<Phase>,
    max_parallel: usize,
    free: BTreeMap<String, BTreeSet<usize>>,
    keep_going: bool,
    stopping: bool,
}

impl Scheduler {
    /// `limits`: slots per resource (a resource not listed has none).
    pub fn new(
        needs: Vec<JobNeeds>,
        limits: &BTreeMap<String, u32>,
        max_parallel: usize,
        keep_going: bool,
    ) -> Scheduler {
        Scheduler {
            phase: vec![Phase::Pending; needs.len()],
            needs,
            max_parallel: max_parallel.max(1),
            free: limits
                .iter()
                .map(|(r, n)| (r.clone(), (0..*n as usize).collect()))
                .collect(),
            keep_going,
            stopping: false,
        }
    }

    pub fn phase(&self, job: usize) -> &Phase {
        &self.phase[job]
    }

    /// The pending jobs whose upstream all succeeded (none once stopping), after marking
    /// those behind a failure as skipped (reported once each).
    pub fn poll(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        for job in 0..self.needs.len() {
            if self.phase[job] != Phase::Pending {
                continue;
            }
            let failed = self.needs[job]
                .upstream
                .iter()
                .find_map(|&u| match self.phase[u] {
                    Phase::Failed => Some(u),
                    Phase::Skipped { failed } => Some(failed),
                    _ => None,
                });
            if let Some(failed) = failed {
                self.phase[job] = Phase::Skipped { failed };
                steps.push(Step::Skipped { job, failed });
            } else if !self.stopping
                && self.needs[job]
                    .upstream
                    .iter()
                    .all(|&u| self.phase[u] == Phase::Succeeded)
            {
                steps.push(Step::Ready(job));
            }
        }
        steps
    }

    /// Starts a ready job if the parallelism limit and its resources allow, taking the
    /// lowest free slot numbers; `None` leaves it pending.
    pub fn try_start(&mut self, job: usize) -> Option<Grant> {
        assert_eq!(self.phase[job], Phase::Pending, "job {job} started twice");
        if self.stopping || self.running() >= self.max_parallel {
            return None;
        }
        let fits = self.needs[job].resources.iter().all(|(r, n)| {
            self.free
                .get(r)
                .is_some_and(|free| free.len() >= *n as usize)
        });
        if !fits {
            return None;
        }
        let mut grant = Grant::default();
        for (r, n) in &self.needs[job].resources {
            let free = self.free.get_mut(r).expect("checked above");
            let taken: Vec<usize> = free.iter().copied().take(*n as usize).collect();
            for s in &taken {
                free.remove(s);
            }
            grant.slots.insert(r.clone(), taken);
        }
        self.phase[job] = Phase::Running(grant.clone());
        Some(grant)
    }

    /// Records a job's end (a running job's slots are freed). A failure stops new starts
    /// unless keep-going.
    pub fn finish(&mut self, job: usize, ok: bool) {
        if let Phase::Running(grant) = &self.phase[job] {
            for (r, slots) in &grant.slots {
                self.free
                    .get_mut(r)
                    .expect("granted")
                    .extend(slots.iter().copied());
            }
        }
        self.phase[job] = if ok { Phase::Succeeded } else { Phase::Failed };
        if !ok && !self.keep_going {
            self.stopping = true;
        }
    }

    /// No new job starts from now on; running ones finish.
    pub fn cancel(&mut self) {
        self.stopping = true;
    }

    pub fn stopping(&self) -> bool {
        self.stopping
    }

    pub fn running(&self) -> usize {
        self.phase
            .iter()
            .filter(|p| matches!(p, Phase::Running(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(upstream: &[usize], gpus: u32) -> JobNeeds {
        JobNeeds {
            upstream: upstream.to_vec(),
            resources: if gpus > 0 {
                BTreeMap::from([("gpu".to_string(), gpus)])
            } else {
                BTreeMap::new()
            },
        }
    }

    fn gpus(n: u32) -> BTreeMap<String, u32> {
        BTreeMap::from([("gpu".to_string(), n)])
    }

    fn ready(s: &mut Scheduler) -> Vec<usize> {
        s.poll()
            .into_iter()
            .filter_map(|st| match st {
                Step::Ready(j) => Some(j),
                Step::Skipped { .. } => None,
            })
            .collect()
    }

    #[test]
    fn jobs_become_ready_when_their_upstream_succeeds() {
        // 0 → 1 → 3, 0 → 2 → 3
        let mut s = Scheduler::new(
            vec![
                needs(&[], 0),
                needs(&[0], 0),
                needs(&[0], 0),
                needs(&[1, 2], 0),
            ],
            &gpus(1),
            4,
            false,
        );
        assert_eq!(ready(&mut s), [0]);
        s.try_start(0).unwrap();
        assert_eq!(ready(&mut s), Vec::<usize>::new());
        s.finish(0, true);
        assert_eq!(ready(&mut s), [1, 2]);
        s.try_start(1).unwrap();
        s.try_start(2).unwrap();
        s.finish(1, true);
        assert_eq!(ready(&mut s), Vec::<usize>::new(), "3 still waits for 2");
        s.finish(2, true);
        assert_eq!(ready(&mut s), [3]);
    }

    #[test]
    fn a_job_finished_without_starting_counts_as_done() {
        // Cached jobs are finished straight from ready, never started.
        let mut s = Scheduler::new(vec![needs(&[], 0), needs(&[0], 0)], &gpus(1), 1, false);
        assert_eq!(ready(&mut s), [0]);
        s.finish(0, true);
        assert_eq!(ready(&mut s), [1]);
        assert_eq!(s.running(), 0);
    }

    #[test]
    fn parallelism_and_slots_bound_what_starts() {
        let mut s = Scheduler::new(
            vec![needs(&[], 1), needs(&[], 1), needs(&[], 0), needs(&[], 0)],
            &gpus(1),
            3,
            false,
        );
        assert!(s.try_start(0).is_some());
        assert_eq!(s.try_start(1), None, "the only gpu slot is taken");
        assert!(s.try_start(2).is_some());
        assert!(s.try_start(3).is_some());
        s.finish(2, true);
        assert_eq!(s.try_start(1), None, "still no gpu slot");
        s.finish(0, true);
        assert!(s.try_start(1).is_some(), "the freed slot is reused");
        // A resource the pipeline does not declare has no slots at all.
        let mut s = Scheduler::new(vec![needs(&[], 1)], &BTreeMap::new(), 2, false);
        assert_eq!(s.try_start(0), None);
    }

    #[test]
    fn gpu_slots_are_distinct_devices() {
        let mut s = Scheduler::new(
            vec![needs(&[], 1), needs(&[], 1), needs(&[], 1)],
            &gpus(2),
            4,
            false,
        );
        let a = s.try_start(0).unwrap();
        let b = s.try_start(1).unwrap();
        assert_eq!(a.slots["gpu"], [0]);
        assert_eq!(b.slots["gpu"], [1]);
        assert_eq!(s.try_start(2), None, "two GPUs, two stages");
        s.finish(0, true);
        assert_eq!(s.try_start(2).unwrap().slots["gpu"], [0]);
        // A two-GPU job gets two devices.
        let mut s = Scheduler::new(vec![needs(&[], 2)], &gpus(2), 4, false);
        assert_eq!(s.try_start(0).unwrap().slots["gpu"], [0, 1]);
    }

    #[test]
    fn a_failure_stops_new_starts_and_skips_its_dependants() {
        // 0 fails; 1 depends on it, 2 does not; 3 depends on 1.
        let mut s = Scheduler::new(
            vec![needs(&[], 0), needs(&[0], 0), needs(&[], 0), needs(&[1], 0)],
            &gpus(1),
            1,
            false,
        );
        assert_eq!(ready(&mut s), [0, 2]);
        s.try_start(0).unwrap();
        s.finish(0, false);
        assert!(s.stopping());
        assert_eq!(
            s.poll(),
            [
                Step::Skipped { job: 1, failed: 0 },
                Step::Skipped { job: 3, failed: 0 }
            ]
        );
        assert_eq!(s.try_start(2), None, "nothing new starts after a failure");
        assert_eq!(s.poll(), [], "skips are reported once");
        assert_eq!(*s.phase(2), Phase::Pending);
    }

    #[test]
    fn keep_going_runs_what_does_not_depend_on_the_failure() {
        let mut s = Scheduler::new(
            vec![needs(&[], 0), needs(&[0], 0), needs(&[], 0)],
            &gpus(1),
            1,
            true,
        );
        s.try_start(0).unwrap();
        s.finish(0, false);
        assert!(!s.stopping());
        let steps = s.poll();
        assert_eq!(steps, [Step::Skipped { job: 1, failed: 0 }, Step::Ready(2)]);
        assert!(s.try_start(2).is_some());
    }

    #[test]
    fn cancel_lets_running_jobs_finish_and_starts_nothing() {
        let mut s = Scheduler::new(vec![needs(&[], 0), needs(&[], 0)], &gpus(1), 2, false);
        s.try_start(0).unwrap();
        s.cancel();
        assert_eq!(ready(&mut s), Vec::<usize>::new());
        assert_eq!(s.try_start(1), None);
        assert_eq!(s.running(), 1);
        s.finish(0, true);
        assert_eq!(s.running(), 0);
        assert_eq!(*s.phase(1), Phase::Pending);
    }
}
