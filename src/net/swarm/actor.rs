//! The actor's loop: a `select!` over swarm events, commands from [`NetHandle`](super::NetHandle)s
//! and a 250 ms tick (seed redials with exponential backoff, peer-record re-publication).

use super::behaviour::topic_score_params;
use super::{Command, NetActor, NetError, NetEvent, PEER_STATE_MAX, PeerInfo, Seed, TopicKind};
use crate::ids::DatanetId;
use crate::net::{NetMetrics, PEERS_TOPIC, contributions_topic, epochs_topic, keys};
use futures::StreamExt;
use libp2p::PeerId;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl NetActor {
    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => { let _ = reply.send(()); break; }
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::info!(target: "datanet::net", "swarm stopped");
    }

    pub(super) fn emit(&mut self, ev: NetEvent) -> bool {
        match self.events.try_send(ev) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(target: "datanet::net", "daemon event queue full; dropping {:?}", std::mem::discriminant(&e.into_inner()));
                false
            }
        }
    }

    fn topic_for(&self, datanet: &DatanetId, kind: TopicKind) -> IdentTopic {
        IdentTopic::new(match kind {
            TopicKind::Contributions => contributions_topic(datanet),
            TopicKind::Epochs => epochs_topic(datanet),
        })
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Join(d, reply) => {
                let mut res = Ok(());
                for kind in [TopicKind::Contributions, TopicKind::Epochs] {
                    let t = self.topic_for(&d, kind);
                    let g = &mut self.swarm.behaviour_mut().gossipsub;
                    if let Err(e) = g.subscribe(&t) {
                        res = Err(NetError::Gossip(e.to_string()));
                    }
                    let _ = g.set_topic_params(t.clone(), topic_score_params());
                    self.topics.insert(t.hash(), (d, kind));
                }
                // Peers that subscribed before we joined will not announce it again.
                let ct = self.topic_for(&d, TopicKind::Contributions).hash();
                let already: Vec<PeerId> = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&ct))
                    .map(|(p, _)| *p)
                    .collect();
                for peer in already {
                    self.emit(NetEvent::PeerSubscribed { peer, datanet: d });
                }
                let _ = reply.send(res);
            }
            Command::Publish { datanet, kind, data, reply } => {
                let t = self.topic_for(&datanet, kind);
                let res = match self.swarm.behaviour_mut().gossipsub.publish(t.clone(), data) {
                    Ok(_) => {
                        NetMetrics::inc(&self.metrics.gossip_published);
                        Ok(())
                    }
                    Err(gossipsub::PublishError::Duplicate) => Ok(()),
                    Err(e) => {
                        NetMetrics::inc(&self.metrics.gossip_publish_failures);
                        Err(NetError::Publish { topic: t.to_string(), reason: e.to_string() })
                    }
                };
                let _ = reply.send(res);
            }
            Command::Report { message_id, source, acceptance } => {
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &source, acceptance);
            }
            Command::AddSeeds(list) => {
                let now = Instant::now();
                for (peer, addr) in list {
                    if peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let s = self.seeds.entry(peer).or_insert_with(|| Seed {
                        addrs: Vec::new(),
                        backoff: Duration::from_millis(self.cfg.reconnect_backoff_min_ms),
                        next_dial: now,
                        dialing: false,
                    });
                    if !s.addrs.contains(&addr) {
                        s.addrs.push(addr);
                    }
                }
                self.dial_seeds();
            }
            Command::Peers(reply) => {
                let b = self.swarm.behaviour();
                let topics: HashMap<PeerId, usize> = b.gossipsub.all_peers().map(|(p, t)| (*p, t.len())).collect();
                let out = self
                    .connected
                    .iter()
                    .map(|(p, addrs)| {
                        let key = keys::peer_key(p).ok();
                        PeerInfo {
                            peer_id: p.to_string(),
                            key: key.map(|k| k.to_hex()),
                            addrs: addrs.iter().map(|a| a.to_string()).collect(),
                            score: b.gossipsub.peer_score(p),
                            topics: topics.get(p).copied().unwrap_or(0),
                            has_record: key.is_some_and(|k| self.records.contains_key(&k)),
                            seed: self.seeds.contains_key(p),
                        }
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Command::MeshPeers { datanet, kind, reply } => {
                let t = self.topic_for(&datanet, kind).hash();
                let _ = reply.send(self.swarm.behaviour().gossipsub.mesh_peers(&t).count());
            }
            Command::Penalize(peer) => {
                if self.app_scores.len() >= PEER_STATE_MAX && !self.app_scores.contains_key(&peer) {
                    let connected = &self.connected;
                    self.app_scores.retain(|p, _| connected.contains_key(p));
                }
                let s = self.app_scores.entry(peer).or_insert(0.0);
                *s -= 1.0;
                let s = *s;
                self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, s);
            }
            Command::Catchup { peer, request, reply } => {
                NetMetrics::inc(&self.metrics.catchup_requests_sent);
                let id = self.swarm.behaviour_mut().catchup.send_request(&peer, request);
                self.pending_out.insert(id, reply);
            }
            Command::Respond { respond, response } => {
                if let Some(ch) = self.pending_in.remove(&respond) {
                    NetMetrics::inc(&self.metrics.catchup_requests_served);
                    let _ = self.swarm.behaviour_mut().catchup.send_response(ch, response);
                }
            }
            Command::Shutdown(_) => {}
        }
    }

    fn dial_seeds(&mut self) {
        let now = Instant::now();
        let mut to_dial = Vec::new();
        for (p, s) in self.seeds.iter_mut() {
            if !s.dialing && now >= s.next_dial && !self.connected.contains_key(p) {
                s.dialing = true;
                to_dial.push((*p, s.addrs.clone()));
            }
        }
        for (p, addrs) in to_dial {
            NetMetrics::inc(&self.metrics.seed_dials);
            let opts =
                DialOpts::peer_id(p).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(target: "datanet::net", peer = %p, error = %e, "seed dial not started");
                self.seed_failed(&p);
            }
        }
    }

    pub(super) fn seed_failed(&mut self, peer: &PeerId) {
        let max = Duration::from_millis(self.cfg.reconnect_backoff_max_ms);
        if let Some(s) = self.seeds.get_mut(peer) {
            NetMetrics::inc(&self.metrics.seed_dial_failures);
            s.dialing = false;
            s.next_dial = Instant::now() + s.backoff;
            tracing::info!(target: "datanet::net", peer = %peer, retry_ms = s.backoff.as_millis() as u64, "seed unreachable");
            s.backoff = (s.backoff * 2).min(max);
        }
    }

    fn on_tick(&mut self) {
        self.dial_seeds();
        // gossipsub drops everything a graylisted peer sends without telling anyone: count them.
        let gray = gossipsub::PeerScoreThresholds::default().graylist_threshold;
        let g = &self.swarm.behaviour().gossipsub;
        let graylisted = self.connected.keys().filter(|p| g.peer_score(p).is_some_and(|s| s < gray)).count();
        self.metrics.peers_graylisted.store(graylisted as u64, std::sync::atomic::Ordering::Relaxed);
        if Instant::now() >= self.next_record_at {
            self.next_record_at = Instant::now() + Duration::from_secs(self.cfg.peer_record_interval_secs);
            let rec = self.own_record();
            let t = IdentTopic::new(PEERS_TOPIC);
            if self.swarm.behaviour().gossipsub.mesh_peers(&t.hash()).next().is_some()
                || self.swarm.behaviour().gossipsub.all_peers().next().is_some()
            {
                let _ = self.swarm.behaviour_mut().gossipsub.publish(t, rec.to_bytes());
            }
        }
    }
}
