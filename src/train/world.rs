//! Data-parallel launches: where this process stands in a run of many (the environment
//! torchrun, SLURM or `--nproc-per-node` gives it), and the local launcher itself.
//!
//! Every rank runs the same `ehrprep pretrain` command; the plugin joins them in a
//! torch.distributed process group. Rank 0 alone opens the catalog and writes the run.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use ehrprep_plugin_api::requests::World;

use crate::{Error, Result};

/// How long the other ranks get to stop by themselves once one has failed (they notice at
/// their next collective) before the launcher kills them.
const GRACE: Duration = Duration::from_secs(20);

/// This process's rank from the environment: torch.distributed's variables (RANK,
/// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, as torchrun sets them), else SLURM's
/// (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, with MASTER_ADDR and MASTER_PORT
/// exported by the job script). None: a single process. SLURM's are an `srun` step's only:
/// a batch script itself also has SLURM_PROCID and SLURM_NTASKS, and is one process.
pub fn from_env(timeout_s: u64) -> Result<Option<World>> {
    parse(|name| std::env::var(name).ok(), timeout_s)
}

/// [`from_env`] over any variable lookup.
pub fn parse(var: impl Fn(&str) -> Option<String>, timeout_s: u64) -> Result<Option<World>> {
    let (rank_var, size_var, local_var) = if var("RANK").is_some() || var("WORLD_SIZE").is_some() {
        ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    } else if var("SLURM_PROCID").is_some() && var("SLURM_STEP_NUM_TASKS").is_some() {
        ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID")
    } else {
        return Ok(None);
    };
    let number = |name: &str| -> Result<Option<usize>> {
        var(name)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    Error::Invalid(format!(
                        "{name} is `{v}`; expected a whole number (a data-parallel launch's rank variables)"
                    ))
                })
            })
            .transpose()
    };
    let required = |name: &str| -> Result<usize> {
        number(name)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{rank_var} and {size_var} must be set together (a data-parallel launch); {name} is missing"
            ))
        })
    };
    let (rank, size) = (required(rank_var)?, required(size_var)?);
    if size == 0 || rank >= size {
        return Err(Error::Invalid(format!(
            "{rank_var} {rank} is not a rank of {size_var} {size}"
        )));
    }
    // One rank is a group too when a launcher says so (`--nproc-per-node 1`, torchrun): the
    // same code path as many. A lone SLURM task without MASTER_ADDR is just a process.
    if size == 1 && var("MASTER_ADDR").is_none() {
        return Ok(None);
    }
    let local_rank = number(local_var)?.unwrap_or(0);
    let master_addr = var("MASTER_ADDR")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "a data-parallel launch of {size} ranks needs MASTER_ADDR (the host of rank 0)"
            ))
        })?;
    let master_port = match var("MASTER_PORT") {
        None => 29500,
        Some(p) => p
            .trim()
            .parse::<u16>()
            .map_err(|_| Error::Invalid(format!("MASTER_PORT is `{p}`; expected a port number")))?,
    };
    Ok(Some(World {
        rank,
        size,
        local_rank,
        master_addr,
        master_port,
        interface: var("GLOO_SOCKET_IFNAME")
            .filter(|i| !i.is_empty())
            .map(|i| i.split(',').next().unwrap_or_default().to_string()),
        // torch.distributed's own rule: the agent's store, per restart attempt.
        agent_store: (var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True")).then(|| {
            let attempt = var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into());
            format!("/worker/attempt_{}", attempt.trim())
        }),
        backend: None,
        timeout_s,
    }))
}

/// Runs `args` (this program's own arguments, `--nproc-per-node` removed) as `nproc`
/// local ranks, as `torchrun --standalone --nproc-per-node N` would: each with RANK,
/// LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT and a share of the
/// cores as OMP_NUM_THREADS. Returns when all
/// have ended; when one fails, the others get [`GRACE`] to stop by themselves and are then
/// killed, and the error names the rank that failed first.
///
/// The ranks run in a process group of their own, so a Ctrl-C at the terminal reaches them
/// once, through the launcher: each time `interrupts` counts one more, every rank gets one
/// SIGINT (the first stops them at the next step, with a checkpoint).
pub fn launch(
    program: &std::path::Path,
    args: &[OsString],
    nproc: usize,
    interrupts: &dyn Fn() -> usize,
) -> Result<()> {
    if nproc == 0 {
        return Err(Error::Invalid("--nproc-per-node must be at least 1".into()));
    }
    if std::env::var_os("RANK").is_some()
        || std::env::var_os("WORLD_SIZE").is_some()
        || from_env(0).is_ok_and(|w| w.is_some_and(|w| w.size > 1))
    {
        return Err(Error::Invalid(
            "--nproc-per-node starts the ranks itself; under torchrun or srun leave it out".into(),
        ));
    }
    let port = free_port()?;
    // As torchrun does, ranks share the cores rather than each taking all of them (libtorch
    // reads OMP_NUM_THREADS; --threads still wins).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads =
        std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (cores / nproc).max(1).to_string());
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &threads)
            .process_group(0);
        interruptible(&mut command);
        match command.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(e) => {
                kill_all(&mut children);
                return Err(Error::Invalid(format!(
                    "starting rank {rank} (`{}`) failed: {e}",
                    program.display()
                )));
            }
        }
    }
    supervise(children, GRACE, interrupts)
}

/// A launcher started in the background (`cmd &`, nohup) inherits SIGINT ignored, and so
/// would its ranks: one still loading would then miss the interrupt the launcher forwards.
/// The launcher handles SIGINT itself, so its ranks get the default action back.
#[allow(unsafe_code)] // a pre_exec hook, the only way to set a child's signal disposition
fn interruptible(command: &mut Command) {
    // SAFETY: runs between fork and exec; `signal` is async-signal-safe and touches no
    // memory of this process.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
}

/// Waits for every child; once one fails, the others get `grace` before they are killed.
/// Interrupts counted by `interrupts` are forwarded to the children still running.
pub fn supervise(
    mut children: Vec<Option<Child>>,
    grace: Duration,
    interrupts: &dyn Fn() -> usize,
) -> Result<()> {
    let mut failed: Option<(usize, ExitStatus)> = None;
    let mut failed_at = None;
    let mut forwarded = 0;
    loop {
        let seen = interrupts();
        if seen > forwarded {
            forwarded = seen;
            for child in children.iter().flatten() {
                // `kill`, not libc: the host crate keeps its unsafe code to a few places.
                let _ = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status();
            }
        }
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                *slot = None;
                // A rank that the forwarded interrupt reached before it could catch it
                // (while loading) stopped as asked.
                let interrupted = forwarded > 0 && status.signal() == Some(2);
                if !status.success() && !interrupted && failed.is_none() {
                    failed = Some((rank, status));
                    failed_at = Some(Instant::now());
                }
            }
        }
        if children.iter().all(Option::is_none) {
            break;
        }
        if failed_at.is_some_and(|t| t.elapsed() > grace) {
            kill_all(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        None => Ok(()),
        Some((rank, status)) => Err(Error::Invalid(format!(
            "rank {rank} of {} failed ({status}); the other ranks were stopped",
            children.len()
        ))),
    }
}

fn kill_all(children: &mut [Option<Child>]) {
    for child in children.iter_mut().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
    children.iter_mut().for_each(|c| *c = None);
}

/// A port nobody listens on now, for rank 0's rendezvous store.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Invalid(format!("finding a free local port failed: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("finding a free local port failed: {e}")))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(|name| vars.get(name).cloned(), 60)
    }

    #[test]
    fn torchrun_variables_give_the_rank() {
        let w = world(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29400"),
            ("GLOO_SOCKET_IFNAME", "eth1,eth2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                w.rank,
                w.size,
                w.local_rank,
                w.master_addr.as_str(),
                w.master_port
            ),
            (3, 16, 3, "node1", 29400)
        );
        assert_eq!(w.interface.as_deref(), Some("eth1"));
        assert_eq!(w.timeout_s, 60);
        assert_eq!(w.agent_store, None);
        // Under torchrun the agent serves the store.
        let w = world(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(w.agent_store.as_deref(), Some("/worker/attempt_2"));
    }

    #[test]
    fn slurm_variables_stand_in_for_torchruns() {
        let w = world(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_STEP_NUM_TASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "node1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (w.rank, w.size, w.local_rank, w.master_port),
            (9, 16, 1, 29500)
        );
        // torchrun's own variables win inside an allocation.
        let w = world(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_NUM_TASKS", "1"),
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((w.rank, w.size), (1, 2));
    }

    #[test]
    fn one_process_is_no_world() {
        assert_eq!(world(&[]).unwrap(), None);
        assert_eq!(world(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        // ... unless a launcher gave it a rendezvous: a group of one.
        let alone = world(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
        ]);
        assert_eq!(alone.unwrap().map(|w| w.size), Some(1));
        assert_eq!(
            world(&[("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "1")]).unwrap(),
            None
        );
        // A batch script of an 8-task job, outside srun: one process.
        assert_eq!(
            world(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "8"),
                ("MASTER_ADDR", "h")
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn bad_variables_are_named() {
        let e = |vars: &[(&str, &str)]| world(vars).unwrap_err().to_string();
        assert!(e(&[("RANK", "1")]).contains("WORLD_SIZE is missing"));
        assert!(e(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("RANK 2 is not a rank"));
        assert!(e(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK is `x`"));
        assert!(e(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR"));
        assert!(
            e(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "99999")
            ])
            .contains("MASTER_PORT is `99999`")
        );
    }

    #[test]
    fn a_failed_rank_stops_the_others_and_is_named() {
        let spawn = |script: &str| {
            Some(
                Command::new("sh")
                    .args(["-c", script])
                    .spawn()
                    .expect("sh starts"),
            )
        };
        // Rank 1 fails at once; rank 0 would run for a minute and is killed after the grace.
        let grace = Duration::from_millis(300);
        let started = Instant::now();
        let none = || 0;
        let e = supervise(vec![spawn("exec sleep 60"), spawn("exit 3")], grace, &none)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("rank 1 of 2 failed"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(30));
        // All succeed: Ok.
        supervise(vec![spawn("exit 0"), spawn("true")], grace, &none).unwrap();
    }

    /// `script` as a rank spawned with SIGINT ignored, as under `nohup` or `cmd &`, then
    /// given the launcher's reset.
    #[allow(unsafe_code)]
    fn rank_ignoring_interrupts(script: &str) -> Child {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        // SAFETY: between fork and exec; `signal` is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        interruptible(&mut command);
        command.spawn().expect("sh starts")
    }

    /// Supervises `rank` and counts one interrupt once `ready` exists.
    fn interrupt_when(rank: Child, ready: &std::path::Path) -> Result<()> {
        let interrupts = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let asked = Instant::now();
                while !ready.exists() && asked.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                interrupts.fetch_add(1, Ordering::SeqCst);
            });
            let count = || interrupts.load(Ordering::SeqCst);
            supervise(vec![Some(rank)], Duration::from_secs(1), &count)
        })
    }

    #[test]
    fn interrupts_are_forwarded_to_the_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        // A rank that exits 7 on SIGINT and would otherwise run for a minute.
        let script = format!(
            "trap 'kill $!; exit 7' INT; touch '{}'; sleep 60 & wait",
            ready.display()
        );
        let started = Instant::now();
        let e = interrupt_when(rank_ignoring_interrupts(&script), &ready)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status: 7"), "{e}");
        // A rank the interrupt reaches before it handles signals dies of it: a stop, not a
        // failure.
        let ready = dir.path().join("loading");
        let script = format!("touch '{}'; exec sleep 60", ready.display());
        interrupt_when(rank_ignoring_interrupts(&script), &ready).unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
