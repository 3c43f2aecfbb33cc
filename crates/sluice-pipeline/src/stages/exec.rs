//! `exec`: a stage that is any program speaking JSON lines, one long-lived process per worker, so
//! a stage can live in its own Python environment. Per batch, the worker writes one JSON record
//! per line to the program's stdin and reads one line per record back from its stdout, in order.
//! A reply `{"sluice_error": "why"}` fails that item; `{"sluice_error": {"message": "why",
//! "transient": true}}` asks for a retry. A program that exits or answers garbage is restarted.
//!
//! A program that knows every worker would fail the same way (its model is missing, its settings
//! are wrong) says so and the run stops at once instead of restarting it: it answers a line
//! `{"sluice_fatal": "why"}` (at any point, its setup included), or exits with status 78
//! (`EX_CONFIG` of sysexits.h) before answering its batch.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};

use crate::stages::Record;
use crate::{ItemError, Stage, StageError, StageOptions, WorkerContext};

/// The exit status of a program whose configuration is wrong (sysexits.h): no restart helps.
pub const EX_CONFIG: i32 = 78;

/// Runs a JSON-lines program per worker.
#[derive(Debug, Clone)]
pub struct ExecStage {
    /// The stage's name.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment variables for the program.
    pub env: Vec<(String, String)>,
    /// Worker settings.
    pub options: StageOptions,
    process: Option<Process>,
}

#[derive(Debug)]
struct Process {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Clone for Process {
    fn clone(&self) -> Self {
        unreachable!("stages are cloned before setup, when they have no process")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Closing stdin is the program's signal to finish; kill it if it lingers.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One reply line read: the item's result, or the worker's failure.
type Reply = Result<Result<Record, ItemError>, StageError>;

impl Process {
    /// Writes `batch` to the program and reads its replies, one per record, stopping early at a
    /// fatal reply or when the program closes its output; returns how writing went and the
    /// replies read.
    fn exchange(&mut self, batch: &[Record]) -> (std::io::Result<()>, Vec<Reply>) {
        let Process { stdin, stdout, .. } = self;
        // Write on another thread: a program that answers while it reads would otherwise fill
        // the stdout pipe and block while we block on a full stdin pipe.
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| -> std::io::Result<()> {
                for record in batch {
                    serde_json::to_writer(&mut *stdin, record)?;
                    stdin.write_all(b"\n")?;
                }
                stdin.flush()
            });
            let mut replies = Vec::with_capacity(batch.len());
            let mut line = String::new();
            while replies.len() < batch.len() {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        let reply = reply_to_result(line.trim_end());
                        let fatal = matches!(&reply, Err(e) if e.is_fatal());
                        replies.push(reply);
                        if fatal {
                            break;
                        }
                    }
                    Err(e) => {
                        replies.push(Err(StageError::new(format!(
                            "reading the program's output: {e}"
                        ))));
                        break;
                    }
                }
            }
            (
                writer
                    .join()
                    .unwrap_or(Err(std::io::Error::other("the writer thread panicked"))),
                replies,
            )
        })
    }

    /// The program's exit status, waiting up to half a second for it to exit; `None` while it
    /// still runs.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        let mut exited = self.child.try_wait().ok().flatten();
        for _ in 0..50 {
            if exited.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            exited = self.child.try_wait().ok().flatten();
        }
        exited
    }
}

impl ExecStage {
    /// A stage running `command` in each worker.
    pub fn new(name: &str, command: Vec<String>, options: StageOptions) -> Self {
        ExecStage {
            name: name.to_string(),
            command,
            env: Vec::new(),
            options,
            process: None,
        }
    }
}

fn reply_to_result(line: &str) -> Reply {
    let value: Record = serde_json::from_str(line).map_err(|e| {
        StageError::new(format!(
            "program answered a line that is not JSON ({e}): {line:.200}"
        ))
    })?;
    if let Some(why) = value.get("sluice_fatal") {
        let why = why.as_str().map_or_else(|| why.to_string(), str::to_owned);
        return Err(StageError::fatal(format!("the program says: {why}")));
    }
    Ok(match value.get("sluice_error") {
        None => Ok(value),
        Some(Record::String(message)) => Err(ItemError::permanent(message.clone())),
        Some(detail) => {
            let message = detail
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("failed")
                .to_string();
            let transient = detail
                .get("transient")
                .and_then(|t| t.as_bool())
                .unwrap_or(false);
            Err(ItemError { message, transient })
        }
    })
}

impl Stage for ExecStage {
    type In = Record;
    type Out = Record;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn setup(&mut self, worker: &WorkerContext) -> Result<(), StageError> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| StageError::fatal("exec stage has an empty command"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SLUICE_STAGE", &worker.stage)
            .env("SLUICE_WORKER", worker.worker.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(gpu) = worker.gpu {
            command.env("CUDA_VISIBLE_DEVICES", gpu.to_string());
        }
        let mut child = command.spawn().map_err(|e| {
            let message = format!("cannot start {program:?}: {e}");
            // A program that is not there or not executable is missing for every worker.
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    StageError::fatal(message)
                }
                _ => StageError::new(message),
            }
        })?;
        let stdin = BufWriter::new(child.stdin.take().expect("stdin is piped"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        self.process = Some(Process {
            child,
            stdin,
            stdout,
        });
        Ok(())
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<Result<Record, ItemError>>, StageError> {
        let process = self
            .process
            .as_mut()
            .ok_or_else(|| StageError::new("exec stage was not set up"))?;
        let (written, replies) = process.exchange(batch);
        if let Some(fatal) = replies
            .iter()
            .find_map(|r| r.as_ref().err().filter(|e| e.is_fatal()))
        {
            return Err(fatal.clone());
        }
        if replies.len() < batch.len() {
            // The output closed: the program is exiting; give it a moment to be reaped, so
            // that its status can say whether restarting it could help.
            let exited = process.exit_status();
            let status = exited.map_or_else(|| "still running".into(), |s| s.to_string());
            let message = format!(
                "program {:?} answered {} of {} lines and closed its output ({status})",
                self.command.join(" "),
                replies.len(),
                batch.len()
            );
            return Err(if exited.and_then(|s| s.code()) == Some(EX_CONFIG) {
                StageError::fatal(message)
            } else {
                StageError::new(message)
            });
        }
        written.map_err(|e| StageError::new(format!("writing to the program: {e}")))?;
        replies.into_iter().collect()
    }
}
