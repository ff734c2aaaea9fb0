//! Limits of a stage: what a request asks for, the defaults it gets, and the
//! server's maximums it may not pass.

use runner_protocol::Stage;
use serde::{Deserialize, Serialize};

use crate::lang::Language;

pub use runner_wire::{RequestLimits, StageLimits};

/// The limits `limits` asks for `stage`.
pub fn of_stage(limits: &RequestLimits, stage: Stage) -> &StageLimits {
    match stage {
        Stage::Compile => &limits.compile,
        Stage::Run => &limits.run,
    }
}

/// Limits with every value decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSet {
    pub wall_time_ms: u64,
    pub cpu_time_ms: u64,
    /// For defaults: 0 means "the language's memory size".
    pub memory_mib: u64,
    pub processes: u32,
    pub output_bytes: u64,
    pub file_size_bytes: u64,
}

impl LimitSet {
    /// Each limit by its name, with its value (the units are in the names;
    /// `processes` widened).
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("wall_time_ms", self.wall_time_ms),
            ("cpu_time_ms", self.cpu_time_ms),
            ("memory_mib", self.memory_mib),
            ("processes", self.processes.into()),
            ("output_bytes", self.output_bytes),
            ("file_size_bytes", self.file_size_bytes),
        ]
    }

    pub fn to_protocol(self) -> runner_protocol::Limits {
        runner_protocol::Limits {
            wall_time_ms: self.wall_time_ms,
            cpu_time_ms: self.cpu_time_ms,
            memory_bytes: self.memory_mib << 20,
            processes: self.processes,
            output_bytes: self.output_bytes,
            file_size_bytes: self.file_size_bytes,
        }
    }
}

/// The server's rules: defaults per stage and maximums for any stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPolicy {
    pub compile: LimitSet,
    pub run: LimitSet,
    pub max: LimitSet,
}

impl Default for LimitPolicy {
    /// Generous for compilers: under software emulation (TCG) a Rust
    /// compile takes tens of seconds.
    fn default() -> Self {
        Self {
            compile: LimitSet {
                wall_time_ms: 120_000,
                cpu_time_ms: 120_000,
                memory_mib: 0,
                processes: 256,
                output_bytes: 1 << 20,
                file_size_bytes: 256 << 20,
            },
            run: LimitSet {
                wall_time_ms: 10_000,
                cpu_time_ms: 10_000,
                memory_mib: 0,
                processes: 64,
                output_bytes: 1 << 20,
                file_size_bytes: 64 << 20,
            },
            max: LimitSet {
                wall_time_ms: 300_000,
                cpu_time_ms: 300_000,
                memory_mib: 4096,
                processes: 1024,
                output_bytes: 64 << 20,
                file_size_bytes: 1 << 30,
            },
        }
    }
}

impl LimitPolicy {
    /// The limits of `stage` for a request asking for `asked`, or a message
    /// saying which value is out of range.
    pub fn resolve(
        &self,
        stage: Stage,
        asked: &StageLimits,
        language: &Language,
    ) -> Result<LimitSet, String> {
        let defaults = match stage {
            Stage::Compile => &self.compile,
            Stage::Run => &self.run,
        };
        let max = &self.max;
        let check = |name: &str, value: u64, max: u64, unit: &str| {
            if value == 0 {
                Err(format!("{stage}.{name} must be above 0"))
            } else if value > max {
                Err(format!(
                    "{stage}.{name} = {value} is above the server's maximum of {max}{unit}"
                ))
            } else {
                Ok(value)
            }
        };
        let memory = asked.memory_mib.unwrap_or(if defaults.memory_mib == 0 {
            u64::from(language.memory_mib)
        } else {
            defaults.memory_mib
        });
        if memory < u64::from(language.min_memory_mib) && memory != 0 {
            return Err(format!(
                "{stage}.memory_mib = {memory} is below {}'s minimum of {} MiB",
                language.name, language.min_memory_mib
            ));
        }
        Ok(LimitSet {
            wall_time_ms: check(
                "wall_time_ms",
                asked.wall_time_ms.unwrap_or(defaults.wall_time_ms),
                max.wall_time_ms,
                " ms",
            )?,
            cpu_time_ms: check(
                "cpu_time_ms",
                asked.cpu_time_ms.unwrap_or(defaults.cpu_time_ms),
                max.cpu_time_ms,
                " ms",
            )?,
            memory_mib: check("memory_mib", memory, max.memory_mib, " MiB")?,
            processes: check(
                "processes",
                u64::from(asked.processes.unwrap_or(defaults.processes)),
                u64::from(max.processes),
                "",
            )? as u32,
            output_bytes: check(
                "output_bytes",
                asked.output_bytes.unwrap_or(defaults.output_bytes),
                max.output_bytes,
                " bytes",
            )?,
            file_size_bytes: check(
                "file_size_bytes",
                asked.file_size_bytes.unwrap_or(defaults.file_size_bytes),
                max.file_size_bytes,
                " bytes",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::Languages;

    fn python() -> Language {
        Languages::builtin().unwrap().get("python").unwrap().clone()
    }

    #[test]
    fn defaults_fill_what_is_not_asked() {
        let policy = LimitPolicy::default();
        let run = policy
            .resolve(Stage::Run, &StageLimits::default(), &python())
            .unwrap();
        assert_eq!(run.memory_mib, 512, "the language's memory size");
        assert_eq!(run.wall_time_ms, policy.run.wall_time_ms);
        let compile = policy
            .resolve(Stage::Compile, &StageLimits::default(), &python())
            .unwrap();
        assert_eq!(compile.wall_time_ms, policy.compile.wall_time_ms);
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_name() {
        let policy = LimitPolicy::default();
        let cases = [
            (
                StageLimits {
                    wall_time_ms: Some(0),
                    ..Default::default()
                },
                "run.wall_time_ms must be above 0",
            ),
            (
                StageLimits {
                    cpu_time_ms: Some(10_000_000),
                    ..Default::default()
                },
                "run.cpu_time_ms = 10000000 is above the server's maximum of 300000 ms",
            ),
            (
                StageLimits {
                    memory_mib: Some(64),
                    ..Default::default()
                },
                "run.memory_mib = 64 is below python's minimum of 256 MiB",
            ),
            (
                StageLimits {
                    memory_mib: Some(1 << 20),
                    ..Default::default()
                },
                "above the server's maximum of 4096 MiB",
            ),
            (
                StageLimits {
                    processes: Some(0),
                    ..Default::default()
                },
                "run.processes must be above 0",
            ),
            (
                StageLimits {
                    output_bytes: Some(0),
                    ..Default::default()
                },
                "run.output_bytes must be above 0",
            ),
            (
                StageLimits {
                    file_size_bytes: Some(u64::MAX),
                    ..Default::default()
                },
                "run.file_size_bytes",
            ),
        ];
        for (asked, expected) in cases {
            let message = policy.resolve(Stage::Run, &asked, &python()).unwrap_err();
            assert!(
                message.contains(expected),
                "{message:?} does not contain {expected:?}"
            );
        }
    }
}
