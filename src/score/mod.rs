//! Scoring: the differentiable training metric of the original (`metric`) and the
//! official MicroNet Challenge counter (`counter`).

pub mod counter;
pub mod metric;
