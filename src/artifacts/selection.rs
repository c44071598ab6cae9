//! The rules a `select` stage picks an adjq checkpoint by, over the stage's mini-epoch
//! records, and which checkpoints any of them can pick (what an adjq stage with
//! `keep_checkpoints = "selectable"` keeps).

use super::MiniEpoch;

/// The record with the lowest metric among those with top-1 ≥ `min_top1`; ties go to the
/// later one (trained longer).
pub fn lowest_metric(records: &[MiniEpoch], min_top1: f64) -> Option<usize> {
    records
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, r)| r.accuracy.top1 >= min_top1)
        .min_by(|(_, a), (_, b)| a.metric.total_cmp(&b.metric))
        .map(|(i, _)| i)
}

/// The record with the highest top-1 among those with metric ≤ `max_metric`; ties go to
/// the later one.
pub fn highest_top1(records: &[MiniEpoch], max_metric: f64) -> Option<usize> {
    records
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, r)| r.metric <= max_metric)
        // min_by keeps the first of equals (the latest, iterating backwards); max_by
        // would keep the last.
        .min_by(|(_, a), (_, b)| b.accuracy.top1.total_cmp(&a.accuracy.top1))
        .map(|(i, _)| i)
}

/// For each record, whether some rule with some threshold picks it. A record is picked by
/// `lowest_metric` for some floor iff it is for the floor at its own top-1 (a lower floor
/// only adds rivals), and likewise for `highest_top1` at its own metric; so this is the
/// (metric, top-1) Pareto front with the rules' tie-breaks, and a record off it stays off
/// it as records are added.
pub fn selectable(records: &[MiniEpoch]) -> Vec<bool> {
    (0..records.len())
        .map(|i| {
            let r = &records[i];
            lowest_metric(records, r.accuracy.top1) == Some(i)
                || highest_top1(records, r.metric) == Some(i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::Accuracy;

    fn record(metric: f64, top1: f64) -> MiniEpoch {
        MiniEpoch {
            epoch: 0,
            mini_epoch: 0,
            steps: 1,
            trained_bits: false,
            loss: Default::default(),
            accuracy: Accuracy {
                top1,
                top5: top1,
                images: 100,
            },
            metric,
            params: 0.0,
            ops: 0.0,
            avg_weight_bits: 8.0,
            avg_act_bits: 8.0,
            checkpoint: format!("m{metric}_t{top1}"),
        }
    }

    /// Worked by hand: (metric, top-1) of six mini-epochs.
    #[test]
    fn selectable_checkpoints_are_the_front_with_the_rules_tie_breaks() {
        let rows: Vec<MiniEpoch> = [
            (0.30, 0.90), // 0: best top-1 of all: highest_top1 with no ceiling
            (0.25, 0.80), // 1: dominated by 3 (lower metric, higher top-1)
            (0.20, 0.85), // 2: equal to 3, which is later and wins both ties
            (0.20, 0.85), // 3: lowest metric above top-1 0.8; best top-1 below metric 0.3
            (0.10, 0.60), // 4: lowest metric of all
            (0.15, 0.60), // 5: ties 4's top-1 and is later: highest_top1 under 0.15..0.20
        ]
        .into_iter()
        .map(|(m, t)| record(m, t))
        .collect();
        assert_eq!(selectable(&rows), [true, false, false, true, true, true]);
        assert_eq!(highest_top1(&rows, 0.16), Some(5));
        assert_eq!(lowest_metric(&rows, 0.0), Some(4));
        assert_eq!(lowest_metric(&rows, 0.8), Some(3));
        assert_eq!(lowest_metric(&rows, 0.86), Some(0));
        assert_eq!(highest_top1(&rows, 1e9), Some(0));
        assert_eq!(highest_top1(&rows, 0.29), Some(3));
        assert_eq!(highest_top1(&rows, 0.12), Some(4));
        assert_eq!(highest_top1(&rows, 0.05), None);
    }

    /// Every pick of either rule at every threshold a record defines is selectable, on
    /// pseudo-random records with many ties.
    #[test]
    fn every_pick_of_every_rule_is_selectable() {
        let mut x = 12345u64;
        let mut draw = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((x >> 33) % 5) as f64 / 10.0
        };
        for _ in 0..200 {
            let rows: Vec<MiniEpoch> = (0..12).map(|_| record(draw(), draw())).collect();
            let keep = selectable(&rows);
            for r in &rows {
                for pick in [
                    lowest_metric(&rows, r.accuracy.top1),
                    highest_top1(&rows, r.metric),
                    lowest_metric(&rows, r.accuracy.top1 + 0.05),
                    highest_top1(&rows, r.metric - 0.05),
                ]
                .into_iter()
                .flatten()
                {
                    assert!(keep[pick], "{pick} picked but not kept");
                }
            }
        }
    }
}
