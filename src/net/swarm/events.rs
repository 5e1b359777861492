//! Swarm and behaviour events: listen addresses, connections (seed backoff, the catch-up hello),
//! gossip (peer records checked here, Datanet messages passed to the daemon) and catch-up requests
//! and responses.

use super::behaviour::BehaviourEvent;
use super::{NetActor, NetError, NetEvent, PENDING_INBOUND_MAX, TopicKind};
use crate::net::catchup::{CatchupRequest, CatchupResponse};
use crate::net::{NetMetrics, PEERS_TOPIC};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, request_response};
use std::time::{Duration, Instant};

impl NetActor {
    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(target: "datanet::net", %address, "listening");
                if let Ok(mut l) = self.listen.write() {
                    l.push(address);
                }
                // Re-announce soon with the new address.
                self.next_record_at = self.next_record_at.min(Instant::now() + Duration::from_millis(200));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if let Ok(mut l) = self.listen.write() {
                    l.retain(|a| a != &address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                let addr = endpoint.get_remote_address().clone();
                let entry = self.connected.entry(peer_id).or_default();
                if !entry.contains(&addr) {
                    entry.push(addr);
                }
                self.metrics.peers_connected.store(self.connected.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some(s) = self.seeds.get_mut(&peer_id) {
                    s.dialing = false;
                    s.backoff = Duration::from_millis(self.cfg.reconnect_backoff_min_ms);
                }
                if !self.bootstrapped && self.seeds.contains_key(&peer_id) {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
                if num_established.get() == 1 {
                    let record = self.own_record().to_bytes();
                    self.swarm.behaviour_mut().catchup.send_request(&peer_id, CatchupRequest::Hello { record });
                }
                tracing::debug!(target: "datanet::net", peer = %peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.connected.remove(&peer_id);
                self.emit(NetEvent::PeerGone { peer: peer_id });
                self.metrics.peers_connected.store(self.connected.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some(s) = self.seeds.get_mut(&peer_id) {
                    s.next_dial = Instant::now() + Duration::from_millis(self.cfg.reconnect_backoff_min_ms);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(p), error, .. } => {
                tracing::debug!(target: "datanet::net", peer = %p, %error, "dial failed");
                if self.seeds.get(&p).is_some_and(|s| s.dialing) {
                    self.seed_failed(&p);
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                if matches!(error, libp2p::swarm::ListenError::Denied { .. }) {
                    NetMetrics::inc(&self.metrics.connections_refused);
                }
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour(b),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                if message.topic == IdentTopic::new(PEERS_TOPIC).hash() {
                    let verdict = match self.learn_record(&message.data, message.source) {
                        Ok(true) => MessageAcceptance::Accept,
                        Ok(false) => MessageAcceptance::Ignore,
                        Err(e) => {
                            NetMetrics::inc(&self.metrics.peer_records_rejected);
                            tracing::info!(target: "datanet::net", peer = %propagation_source, error = %e, "peer record rejected");
                            MessageAcceptance::Reject
                        }
                    };
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        verdict,
                    );
                    return;
                }
                let Some(&(datanet, kind)) = self.topics.get(&message.topic) else {
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Ignore,
                    );
                    return;
                };
                NetMetrics::inc(&self.metrics.gossip_received);
                let ev = NetEvent::Gossip {
                    datanet,
                    kind,
                    source: message.source,
                    propagation_source,
                    message_id: message_id.clone(),
                    data: message.data,
                };
                if !self.emit(ev) {
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Ignore,
                    );
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic, .. }) => {
                if let Some(&(datanet, TopicKind::Contributions)) = self.topics.get(&topic) {
                    self.emit(NetEvent::PeerSubscribed { peer: peer_id, datanet });
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if info.protocol_version == "/datanet/1" =>
            {
                for a in info.listen_addrs.into_iter().take(crate::net::record::ADDRS_MAX) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                }
            }
            BehaviourEvent::Catchup(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => match request {
                    CatchupRequest::Hello { record } => {
                        if let Err(e) = self.learn_record(&record, Some(peer)) {
                            NetMetrics::inc(&self.metrics.peer_records_rejected);
                            tracing::info!(target: "datanet::net", %peer, error = %e, "hello record rejected");
                        }
                        let record = self.own_record().to_bytes();
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .catchup
                            .send_response(channel, CatchupResponse::Hello { record });
                    }
                    request => {
                        if self.pending_in.len() >= PENDING_INBOUND_MAX {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .catchup
                                .send_response(channel, CatchupResponse::Refused { reason: "busy".into() });
                            return;
                        }
                        let respond = self.next_respond;
                        self.next_respond += 1;
                        self.pending_in.insert(respond, channel);
                        if !self.emit(NetEvent::CatchupRequest { peer, request, respond })
                            && let Some(ch) = self.pending_in.remove(&respond)
                        {
                            let busy = CatchupResponse::Refused { reason: "busy".into() };
                            let _ = self.swarm.behaviour_mut().catchup.send_response(ch, busy);
                        }
                    }
                },
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.pending_out.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    } else if let CatchupResponse::Hello { record } = response
                        && let Err(e) = self.learn_record(&record, Some(peer))
                    {
                        NetMetrics::inc(&self.metrics.peer_records_rejected);
                        tracing::info!(target: "datanet::net", %peer, error = %e, "hello record rejected");
                    }
                }
            },
            BehaviourEvent::Catchup(request_response::Event::OutboundFailure { peer, request_id, error, .. }) => {
                if let Some(reply) = self.pending_out.remove(&request_id) {
                    NetMetrics::inc(&self.metrics.catchup_failures);
                    let _ = reply.send(Err(NetError::Catchup { peer: peer.to_string(), reason: error.to_string() }));
                }
            }
            _ => {}
        }
    }
}
