//! The executor's side of the workers: their environment, starting them
//! (spawned, or forked from the controller), what the forking controller
//! says, and their connections on the run's socket.

use super::*;

impl Executor {
    /// A worker's environment: what the controller's configuration set, its
    /// clones, who it is (slot, id, run, as pytest-xdist names them too),
    /// and with an adapter the socket and the Python packages.
    pub(super) fn worker_vars(
        &self,
        slot: usize,
        id: &str,
        db_env: &DatabaseEnv,
    ) -> Vec<(String, String)> {
        let mut vars = self.base_env.set.clone();
        vars.extend(db_env.vars.iter().cloned());
        let slots = self.config.jobs.max(1).to_string();
        if self.django {
            vars.push((env::DJANGO.to_string(), "1".to_string()));
        }
        let fresh = if self.config.fresh_transactional {
            "1"
        } else {
            "0"
        };
        vars.extend([
            (env::WORKER.to_string(), slot.to_string()),
            (env::WORKERS.to_string(), slots.clone()),
            (env::WORKER_ID.to_string(), id.to_string()),
            (env::RUN_ID.to_string(), self.run_id.clone()),
            (env::FRESH.to_string(), fresh.to_string()),
            (env::XDIST_WORKER.to_string(), label(slot)),
            (env::XDIST_WORKER_COUNT.to_string(), slots),
        ]);
        if self.config.cov {
            vars.push((env::COV.to_string(), "1".to_string()));
        }
        if self.protocol() {
            vars.push((env::SOCKET.to_string(), self.socket.display().to_string()));
            if let Some(path) = &self.pythonpath {
                vars.push(("PYTHONPATH".to_string(), path.clone()));
            }
        }
        vars
    }

    /// Starts worker `id` of `slot` on the clones named `clones`; the
    /// machine is told if it cannot be started.
    pub(super) fn start_worker(
        &mut self,
        slot: usize,
        generation: usize,
        id: &str,
        clones: &[String],
    ) {
        let clones: Vec<String> = clones.iter().map(|n| self.database_of(n)).collect();
        let clones = clones.as_slice();
        let made: Vec<MadeClone> = clones
            .iter()
            .map(|name| MadeClone {
                url: self.backend.url().with_database(name),
                name: name.clone(),
            })
            .collect();
        let failed = |code, message| Input::SpawnFailed {
            slot,
            generation,
            code,
            message,
        };
        let db_env = match DatabaseEnv::for_aliases(&self.backend, &made, &self.config.aliases) {
            Ok(env) => env,
            Err(e) => {
                let why = format!("cannot prepare the environment of {}: {e}", label(slot));
                return self.input(failed(exit::SETUP_OR_DATABASE, why));
            }
        };
        let vars = self.worker_vars(slot, id, &db_env);
        let mut command = self.config.command.clone();
        if self.protocol() {
            command.extend(adapters::tool(self.adapter).extra_args());
        }
        let echo = if !self.protocol() {
            Echo::Prefixed(format!("[{}] ", label(slot)))
        } else if self.config.verbose >= 2 {
            Echo::Prefixed(format!("[{} output] ", label(slot)))
        } else {
            Echo::Quiet
        };
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let environment = Environment {
            set: vars,
            unset: self.base_env.unset.clone(),
        };
        self.envs.insert(slot, db_env);
        if self.forks.as_ref().is_some_and(|f| f.refused.is_none()) {
            if let Err(why) = self.order_fork(slot, generation, id, clones, environment, echo) {
                self.input(failed(exit::SETUP_OR_DATABASE, why));
            }
            return;
        }
        let spawned = match worker::spawn(&command, &environment, &cwd, echo, Tail::default()) {
            Ok(s) => s,
            Err(e) => {
                let program = command.first().cloned().unwrap_or_default();
                let why = format!("cannot start the test command `{program}`: {e}. Check that it is installed and on PATH (or give its path), e.g. `dbfork run -- .venv/bin/python -m pytest`.");
                return self.input(failed(exit::USAGE, why));
            }
        };
        let events = self.events.clone();
        let mut child = spawned.child;
        let pid = spawned.pid;
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            worker::reap(pid);
            let _ = events.send(Event::Exited {
                slot,
                generation,
                status,
            });
        });
        self.processes.insert(
            (slot, generation),
            Process {
                pid,
                tail: spawned.tail,
                exited: false,
                fifo: None,
            },
        );
    }

    /// Asks the controller to fork worker `id` of `slot`, its output going to
    /// a FIFO of its own; an `Err` says why it cannot be asked.
    fn order_fork(
        &mut self,
        slot: usize,
        generation: usize,
        id: &str,
        clones: &[String],
        environment: Environment,
        echo: Echo,
    ) -> Result<(), String> {
        let output = self
            .socket
            .with_file_name(format!("output-{slot}.{generation}"));
        let tail = Tail::default();
        let fifo = worker::Fifo::open(&output, tail.clone(), echo).map_err(|e| {
            format!(
                "cannot make the output FIFO {} of {}: {e}",
                output.display(),
                label(slot)
            )
        })?;
        let Some(forks) = self.forks.as_mut() else {
            return Err(format!("{} cannot be forked: no controller", label(slot)));
        };
        let order = RunnerMessage::Fork {
            slot,
            generation,
            env: environment.set.into_iter().collect(),
            unset: environment.unset,
            output: output.display().to_string(),
        };
        let _ = forks.orders.send(protocol::encode(&order));
        forks
            .asked
            .insert((slot, generation), (id.to_string(), clones.to_vec()));
        self.processes.insert(
            (slot, generation),
            Process {
                pid: 0,
                tail,
                exited: false,
                fifo: Some(fifo),
            },
        );
        Ok(())
    }

    /// What the controller that the workers are forked from says.
    pub(super) fn controller_said(&mut self, message: Option<Result<WorkerMessage, String>>) {
        let Some(forks) = self.forks.as_mut() else {
            return;
        };
        match message {
            Some(Ok(WorkerMessage::Forked {
                slot,
                generation,
                pid,
                error,
            })) => {
                let asked = forks.asked.remove(&(slot, generation));
                match (pid, error) {
                    (Some(pid), None) => {
                        if self.config.verbose > 0 && !forks.noted {
                            forks.noted = true;
                            self.progress.note("the workers are forked from the controller: each has its configured, collected session (--fork=false starts each afresh)");
                        }
                        dbfork_engine::reaper::register(pid);
                        if let Some(p) = self.processes.get_mut(&(slot, generation)) {
                            p.pid = pid;
                        }
                    }
                    (_, error) => {
                        let why = error.unwrap_or_else(|| "it did not say why".to_string());
                        if self.config.verbose > 0 {
                            self.progress.note(&format!(
                                "the workers are started as processes of their own, not forked from the controller: {why}"
                            ));
                        }
                        forks.refused = Some(why);
                        // Its output FIFO goes; the worker starts afresh.
                        if let Some(p) = self.processes.remove(&(slot, generation)) {
                            if let Some(fifo) = p.fifo {
                                tokio::spawn(fifo.drain());
                            }
                        }
                        if let Some((id, clones)) = asked {
                            // Its environment is made again (its files go first).
                            self.envs.remove(&slot);
                            self.start_worker(slot, generation, &id, &clones);
                        }
                    }
                }
            }
            Some(Ok(WorkerMessage::Exited {
                slot,
                generation,
                status,
            })) => {
                use std::os::unix::process::ExitStatusExt;
                self.forked_exited(slot, generation, status.map(ExitStatus::from_raw));
            }
            Some(Ok(WorkerMessage::Bye | WorkerMessage::Hello { .. })) => {}
            Some(Ok(other)) => {
                tracing::warn!("the controller sent {other:?} while forking workers; ignored");
            }
            Some(Err(why)) => {
                tracing::warn!("the controller sent something dbfork cannot read: {why}");
            }
            None => {
                // The controller is gone, and with it (killed by the kernel)
                // every worker forked from it.
                let forked: Vec<(usize, usize)> = self
                    .processes
                    .iter()
                    .filter(|(_, p)| p.fifo.is_some() && !p.exited)
                    .map(|(key, _)| *key)
                    .collect();
                for (slot, generation) in forked {
                    self.forked_exited(slot, generation, None);
                }
            }
        }
    }

    /// A forked worker ended: once its last output is read, the machine is
    /// told as of a worker dbfork started.
    pub(super) fn forked_exited(
        &mut self,
        slot: usize,
        generation: usize,
        status: Option<ExitStatus>,
    ) {
        let Some(p) = self.processes.get_mut(&(slot, generation)) else {
            return;
        };
        let (pid, fifo) = (p.pid, p.fifo.take());
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Some(fifo) = fifo {
                fifo.drain().await;
            }
            worker::reap(pid);
            let _ = events.send(Event::Exited {
                slot,
                generation,
                status,
            });
        });
    }

    pub(super) fn accept(&mut self, stream: UnixStream) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (read, write) = stream.into_split();
        let tx = worker::line_writer(write);
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            loop {
                let event = match worker::read_line(&mut reader).await {
                    Ok(Some(line)) => Event::Line { conn, line },
                    Ok(None) => break,
                    Err(why) => {
                        // Nothing more is read from it: the worker is rejected.
                        let _ = events.send(Event::Input(Input::Unreadable { conn, why }));
                        return;
                    }
                };
                if events.send(event).is_err() {
                    return;
                }
            }
            let _ = events.send(Event::Input(Input::Closed { conn }));
        });
        self.conns.insert(conn, tx);
        self.input(Input::Connected { conn });
    }

    pub(super) fn send(&self, conn: usize, message: &RunnerMessage) {
        if let Some(tx) = self.conns.get(&conn) {
            let _ = tx.send(protocol::encode(message));
        }
    }

    /// Ends the controller in the background (its configuration's cleanup
    /// overlaps the workers' exits and the clones' drop).
    pub(super) fn stop_controller(&mut self) {
        if self.controller_stop.is_some() {
            return;
        }
        let grace = self.config.grace;
        let controller = self.controller.take();
        self.controller_stop = Some(tokio::spawn(async move {
            if let Some(controller) = controller {
                controller.stop(grace).await;
            }
        }));
    }
}
