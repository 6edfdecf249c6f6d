//! Request-response framing for the federation protocols: every request and
//! every response is one frame, a 4-byte big-endian length followed by that
//! many bytes of courier-protocol's binary codec (1 version byte + postcard).
//!
//! The length is checked against [`FEDERATION_FRAME_BYTES_MAX`] before any
//! buffer is allocated, so a peer announcing a huge frame costs us nothing.

use std::io;
use std::marker::PhantomData;

use courier_protocol::limits::FEDERATION_FRAME_BYTES_MAX;
use futures::prelude::*;
use libp2p::StreamProtocol;
use libp2p::request_response;
use serde::Serialize;
use serde::de::DeserializeOwned;

use courier_protocol::Validate;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use std::sync::Arc;

/// Encodes one value as a frame body.
pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    courier_protocol::codec::binary::encode(value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Decodes one frame body.
pub(crate) fn decode<T: DeserializeOwned + Validate>(bytes: &[u8]) -> io::Result<T> {
    courier_protocol::codec::binary::decode(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Reads one length-prefixed frame.
pub(crate) async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    read_frame_max(io, FEDERATION_FRAME_BYTES_MAX).await
}

/// Reads one length-prefixed frame of at most `max` bytes; a longer one
/// fails after its length, before its body is read.
pub(crate) async fn read_frame_max<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max} (peer not admitted, or over the limit)"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one length-prefixed frame.
pub(crate) async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    body: &[u8],
) -> io::Result<()> {
    if body.len() > FEDERATION_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes exceeds {FEDERATION_FRAME_BYTES_MAX}",
                body.len()
            ),
        ));
    }
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// Which peers may send more than a hello: the event loop admits a peer
/// when its hello is accepted and forgets it when it disconnects or is
/// refused. Shared with every connection's codec, so a stream from a peer
/// that has not been admitted is cut off after its 4-byte length, before
/// a byte of its body is read or a buffer allocated for it (audit #13,
/// item 13: before, any QUIC peer had 3 × 256 streams of 8 MiB frames
/// decoded before it was even identified).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    admitted: std::sync::RwLock<std::collections::HashSet<PeerId>>,
    /// The peer whose connection handler is being built right now (set by
    /// [`Gated`] just before the inner behaviour clones its codec for it).
    building: std::sync::Mutex<Option<PeerId>>,
}

impl Gate {
    /// Lets `peer` send requests of every protocol.
    pub(crate) fn admit(&self, peer: PeerId) {
        self.admitted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
    }

    /// Back to hellos only.
    pub(crate) fn forget(&self, peer: &PeerId) {
        self.admitted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }

    fn is_admitted(&self, peer: Option<&PeerId>) -> bool {
        peer.is_some_and(|p| {
            self.admitted
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(p)
        })
    }
}

/// A request-response codec for one federation protocol: `Req` out, `Resp`
/// back. Each connection gets its own clone, which knows the peer.
pub(crate) struct FrameCodec<Req, Resp> {
    gate: Arc<Gate>,
    peer: Option<PeerId>,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FrameCodec<Req, Resp> {
    pub(crate) fn new(gate: Arc<Gate>) -> Self {
        FrameCodec {
            gate,
            peer: None,
            _types: PhantomData,
        }
    }

    /// Longest request body accepted on `protocol` from this peer: a hello
    /// from anyone, anything else only from an admitted peer.
    fn request_max(&self, protocol: &StreamProtocol) -> usize {
        if protocol.as_ref() == courier_protocol::federation::protocols::HELLO
            || self.gate.is_admitted(self.peer.as_ref())
        {
            FEDERATION_FRAME_BYTES_MAX
        } else {
            0
        }
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        // The behaviour's own codec has no peer: its clone for a new
        // connection takes the peer [`Gated`] named for it. A connection's
        // codec keeps its peer in the clones made per stream.
        let peer = self
            .peer
            .or_else(|| *self.gate.building.lock().unwrap_or_else(|p| p.into_inner()));
        FrameCodec {
            gate: self.gate.clone(),
            peer,
            _types: PhantomData,
        }
    }
}

/// A request-response behaviour whose per-connection codecs know their
/// peer: it names the peer to the [`Gate`] just before the inner behaviour
/// builds (and clones its codec into) the connection's handler. Otherwise
/// it is the inner behaviour (`Deref`).
pub(crate) struct Gated<B> {
    inner: B,
    gate: Arc<Gate>,
}

impl<B> Gated<B> {
    pub(crate) fn new(inner: B, gate: Arc<Gate>) -> Self {
        Gated { inner, gate }
    }

    fn building(&self, peer: Option<PeerId>) {
        *self.gate.building.lock().unwrap_or_else(|p| p.into_inner()) = peer;
    }
}

impl<B> std::ops::Deref for Gated<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for Gated<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gated<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.building(Some(peer));
        let handler = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        );
        self.building(None);
        handler
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.building(Some(peer));
        let handler = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        );
        self.building(None);
        handler
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

impl<Req, Resp> request_response::Codec for FrameCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Validate + Send + 'static,
    Resp: Serialize + DeserializeOwned + Validate + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, protocol: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame_max(io, self.request_max(protocol)).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io).await?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&req)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&res)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the bytes a reader hands out.
    struct Counting<'a> {
        data: &'a [u8],
        read: usize,
    }

    impl AsyncRead for Counting<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.data.len() - self.read);
            let start = self.read;
            buf[..n].copy_from_slice(&self.data[start..start + n]);
            self.read += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    type Deliver = FrameCodec<courier_protocol::DeliveryBatch, courier_protocol::DeliveryAcks>;

    /// Audit item 13: a peer that has not completed a hello gets its
    /// delivery frame cut off after the 4-byte length, its body never read;
    /// once admitted, the same frame is read.
    #[test]
    fn an_unadmitted_peer_is_cut_off_after_the_length_of_a_delivery_frame() {
        futures::executor::block_on(async {
            let gate = Arc::new(Gate::default());
            let peer = PeerId::random();
            *gate.building.lock().unwrap() = Some(peer);
            let mut codec = Deliver::new(gate.clone()).clone();
            *gate.building.lock().unwrap() = None;
            let mut frame = (8u32 * 1024 * 1024).to_be_bytes().to_vec();
            frame.resize(4 + 8 * 1024 * 1024, 0);
            let deliver = StreamProtocol::new(courier_protocol::federation::protocols::DELIVER);
            let mut io = Counting {
                data: &frame,
                read: 0,
            };
            let err = request_response::Codec::read_request(&mut codec, &deliver, &mut io)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert_eq!(io.read, 4, "only the length was read");

            // A hello is read (and fails to decode only because it is zeros).
            let hello = StreamProtocol::new(courier_protocol::federation::protocols::HELLO);
            let small = [&8u32.to_be_bytes()[..], &[0u8; 8]].concat();
            let mut io = Counting {
                data: &small,
                read: 0,
            };
            let _ = request_response::Codec::read_request(&mut codec, &hello, &mut io).await;
            assert_eq!(io.read, 12);

            gate.admit(peer);
            let mut io = Counting {
                data: &frame,
                read: 0,
            };
            let _ = request_response::Codec::read_request(&mut codec, &deliver, &mut io).await;
            assert_eq!(io.read, frame.len(), "an admitted peer's frame is read");
        });
    }
}
