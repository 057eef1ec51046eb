//! Agents' children in the pool (`--agent-listen`, SPEC section 14). An
//! agent's link (`crate::agents`) tells the pool when the agent joins, when
//! each of its children is ready, and when it is gone; from then on the
//! child is a slot like any other, dispatched to first-free, its reports
//! and exit handled by `lifecycle.rs`. What differs: the agent spawns and
//! replaces its children (the pool never does), they do not count against
//! `pool-max`, and their pids are on another host.

use super::*;
use crate::events::Event;
use crate::types::FastSet;
use taskmaster_proto::stats::AgentInfo;
use tracing::{info, warn};

/// An agent connected now.
pub(super) struct AgentRec {
    pub(super) name: Arc<str>,
    pub(super) address: String,
    pub(super) slots: u32,
    /// The modules its children run.
    pub(super) modules: FastSet<Arc<str>>,
    /// It is stopping: its children finish their jobs and take no more.
    pub(super) draining: bool,
}

impl Pool {
    /// The master's own children (what `pool-start` and `pool-max` bound).
    pub(super) fn local_children(&self) -> usize {
        self.children.len() - self.remote
    }

    /// An agent's name for messages; its link number if it is gone.
    pub(super) fn agent_name(&self, agent: u64) -> Arc<str> {
        self.agents
            .get(&agent)
            .map_or_else(|| format!("#{agent}").into(), |a| a.name.clone())
    }

    /// The modules of the master's own children and of every agent's: a
    /// job for any of them is accepted.
    pub(super) fn refresh_modules(&mut self) {
        let mut all = self.local_modules.clone();
        for agent in self.agents.values() {
            all.extend(agent.modules.iter().cloned());
        }
        self.modules = all;
    }

    pub(super) fn agent_joined(&mut self, id: u64, name: Arc<str>, address: String, slots: u32) {
        info!(agent = %name, %address, slots, "agent joined");
        let message = format!("{name} ({address}), {slots} slots");
        self.events.emit(|| Event {
            message: Some(message),
            ..Event::new("agent-joined")
        });
        self.agents.insert(
            id,
            AgentRec {
                name,
                address,
                slots,
                modules: FastSet::default(),
                draining: false,
            },
        );
    }

    /// Agent `id` is stopping (SIGTERM): its idle children are stopped
    /// now, its busy ones after their jobs (jobs prefetched behind those
    /// still run there; no new ones are sent).
    pub(super) fn agent_draining(&mut self, id: u64) {
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        agent.draining = true;
        info!(agent = %agent.name, "agent draining");
        let mine: Vec<(ChildId, State)> = self
            .children
            .iter()
            .filter(|(_, s)| s.agent == Some(id))
            .map(|(&c, s)| (c, s.state))
            .collect();
        for (child, state) in mine {
            match state {
                State::Idle | State::Starting => self.retire(child, "its agent is draining"),
                State::Busy => {
                    if let Some(slot) = self.children.get_mut(&child) {
                        slot.retire_when_free = true;
                    }
                }
                State::Stopping => {}
            }
        }
    }

    /// A ready child on agent `agent` joins the pool as an idle slot.
    pub(super) fn agent_child(
        &mut self,
        agent: u64,
        pid: u32,
        modules: Vec<String>,
        ctl: mpsc::UnboundedSender<ChildCtl>,
    ) -> Option<ChildId> {
        if self.shutting_down || self.agents.get(&agent).is_none_or(|a| a.draining) {
            return None;
        }
        let id = self.next_child;
        self.next_child += 1;
        // Its start-up is its agent's business: its death is never a
        // start-up failure of the master's handler, and its first job does
        // not clear the master's breaker. (No secret: it is connected.)
        let slot = Slot {
            pid: Some(pid),
            attached: true,
            started: true,
            agent: Some(agent),
            ..self.new_slot(ctl, [0; SECRET_LEN])
        };
        self.children.insert(id, slot);
        self.remote += 1;
        self.starting += 1;
        self.child_ready(id, modules);
        Some(id)
    }

    /// Takes every child of `agent` out of dispatch (its link is lost:
    /// their exits follow one by one).
    pub(super) fn stop_agent_slots(&mut self, agent: u64) {
        let mine: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, s)| s.agent == Some(agent) && s.state != State::Stopping)
            .map(|(&c, _)| c)
            .collect();
        for child in mine {
            self.set_state(child, State::Stopping);
        }
    }

    /// An agent's link is gone; its children's exits came first (each
    /// failed its job), so only the record is left.
    pub(super) fn agent_gone(&mut self, id: u64, cause: String) {
        if !self.agents.contains_key(&id) {
            return;
        }
        let orphans: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, s)| s.agent == Some(id))
            .map(|(&c, _)| c)
            .collect();
        self.stop_agent_slots(id);
        if !orphans.is_empty() {
            // The link reports every child it announced before it goes;
            // any left would hold jobs forever. (The record stays until
            // they are failed, so their messages name the agent.)
            warn!(agent = %self.agent_name(id), children = orphans.len(), "agent gone with children still in the pool");
            for child in orphans {
                self.child_exited(child, crate::types::ExitInfo::Lost(cause.clone()));
            }
        }
        let Some(agent) = self.agents.remove(&id) else {
            return;
        };
        if agent.draining {
            info!(agent = %agent.name, address = %agent.address, %cause, "agent left after draining");
        } else {
            warn!(agent = %agent.name, address = %agent.address, %cause, "agent lost");
        }
        let how = if agent.draining {
            "drained and left"
        } else {
            "lost"
        };
        let message = format!("{} ({}) {how}: {cause}", agent.name, agent.address);
        self.events.emit(|| Event {
            message: Some(message),
            ..Event::new("agent-lost")
        });
        self.refresh_modules();
        // Its queued share waits for the remaining slots; a pure dispatcher
        // left with none keeps its queue until an agent comes back.
        self.replenish();
    }

    pub(super) fn agent_infos(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .map(|(&id, a)| {
                let mine = self.children.values().filter(|s| s.agent == Some(id));
                let (mut children, mut busy) = (0, 0);
                for slot in mine {
                    children += 1;
                    busy += usize::from(!slot.jobs.is_empty());
                }
                AgentInfo {
                    name: a.name.to_string(),
                    address: a.address.clone(),
                    slots: a.slots,
                    children,
                    busy,
                }
            })
            .collect()
    }
}
