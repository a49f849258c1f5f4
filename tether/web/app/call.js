// The browser media side of a tether call (see docs/protocol.md, calls).
//
// Two RTCPeerConnections per participant, both with the server's media worker:
//  * publisher ("pub"): this browser offers its camera (three simulcast layers,
//    rids q/h/f) and microphone, sendonly; the server answers (call.publish).
//  * subscriber ("sub"): the server offers one transceiver per forwarded track
//    (call.offer) and this browser answers (call.answer). The server
//    renegotiates it when tracks come and go.
// Candidates are gathered before an SDP is sent (they travel inside it), so no
// trickle is needed; the worker's candidates are inside its SDP too.
//
// The class knows nothing about the DOM: it reports what to show through the
// callbacks in `view` (see CallView in app.js).

/** Simulcast layers of the camera: quarter, half and full resolution. */
export const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/** Longest wait for ICE gathering before sending an SDP anyway (ms). */
const GATHER_TIMEOUT_MS = 5_000;

/**
 * @typedef {object} Signaling  the call frames, bound to one room by app.js
 * @property {() => Promise<any>} join          call.join reply data (camelCase, as the SDK gives it)
 * @property {() => Promise<void>} leave
 * @property {(sdp: string) => Promise<{sdp: string, tracks: any[]}>} publish
 * @property {(sdp: string) => Promise<void>} answer
 * @property {(kind: "audio"|"video", muted: boolean) => Promise<void>} mute
 * @property {(track: string, width: number, height: number) => void} quality
 * @property {() => Promise<void>} restart
 */

/**
 * @typedef {object} CallViewCallbacks
 * @property {(stream: MediaStream|null) => void} local
 * @property {(p: any) => void} participant       a PARTICIPANT map was added or updated
 * @property {(id: string) => void} participantLeft
 * @property {(participantId: string, track: MediaStreamTrack, trackId: string) => void} remoteTrack
 * @property {(participantId: string|null) => void} speaker
 * @property {(text: string) => void} status
 * @property {(reason: string) => void} ended     the call is over for this browser
 */

/** Camera and microphone; the microphone alone; or nothing (an empty stream). */
async function localMedia() {
  // 720p lets the browser send all three simulcast layers.
  const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24, max: 30 } };
  for (const constraints of [{ audio: true, video }, { audio: true }, { video }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch {
      // Refused or absent: try with less.
    }
  }
  return new MediaStream();
}

/** Wait until the PC has gathered its candidates (or a timeout). */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

export class Call {
  /**
   * @param {string} room
   * @param {string} me my user id
   * @param {Signaling} signaling
   * @param {CallViewCallbacks} view
   */
  constructor(room, me, signaling, view) {
    this.room = room;
    this.me = me;
    this.sig = signaling;
    this.view = view;
    /** @type {string|null} my participant id */
    this.participant = null;
    /** @type {MediaStream|null} */
    this.stream = null;
    /** @type {RTCPeerConnection|null} */
    this.pub = null;
    /** @type {RTCPeerConnection|null} */
    this.sub = null;
    /** @type {Map<string, string>} subscriber mid -> track id, from the latest call.offer */
    this.mids = new Map();
    /** @type {Map<string, any>} participant id -> PARTICIPANT */
    this.participants = new Map();
    this.iceServers = [];
    this.audioMuted = false;
    this.videoMuted = false;
    this.closed = false;
    // Offers are answered one at a time, in the order they came.
    this.offerChain = Promise.resolve();
    this.publishing = null;
    /** @type {string[]} the `media` of the latest re-joins ("kept" or "new"), for diagnostics */
    this.rejoins = [];
  }

  /**
   * Camera and microphone, then join and publish. Without a camera (or when it
   * is refused) the call goes on with the microphone only, and without either
   * this browser only receives. Throws when the join fails.
   */
  async start() {
    // Join first: a server without calls (or a full call) refuses before the
    // browser asks for the camera.
    this.view.status("joining…");
    const joined = await this.sig.join();
    this.acceptJoin(joined);
    this.view.status("asking for camera and microphone…");
    const stream = await localMedia();
    if (this.closed) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    this.stream = stream;
    this.view.local(stream);
    this.view.status(stream.getTracks().length ? "" : "no camera or microphone: you can see and hear the others");
    await this.publish();
  }

  /** Apply a call.join reply (first join or re-join after a reconnect). */
  acceptJoin(data) {
    this.participant = data.participant;
    this.iceServers = Array.isArray(data.iceServers) ? data.iceServers : [];
    const seen = new Set();
    for (const p of data.participants || []) {
      seen.add(p.id);
      this.updateParticipant(p);
    }
    for (const id of [...this.participants.keys()]) {
      if (!seen.has(id) && id !== this.participant) this.removeParticipant(id);
    }
    this.view.speaker(data.speaker ?? null);
  }

  /** After the signaling connection came back: re-bind, and publish afresh if the server lost our media. */
  async rejoin() {
    if (this.closed) return;
    const data = await this.sig.join();
    this.acceptJoin(data);
    this.rejoins.push(data.media);
    if (this.rejoins.length > 10) this.rejoins.shift();
    if (data.media !== "kept") {
      this.dropPeers();
      await this.publish();
    }
  }

  /** Create the publisher PC, offer, and apply the server's answer. */
  async publish() {
    if (this.publishing) return this.publishing;
    this.publishing = this.doPublish().finally(() => {
      this.publishing = null;
    });
    return this.publishing;
  }

  async doPublish() {
    // Nothing to send (no devices): receive only.
    if (this.closed || !this.stream || this.stream.getTracks().length === 0) return;
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle" });
    this.pub = pc;
    const [video] = this.stream.getVideoTracks();
    const [audio] = this.stream.getAudioTracks();
    if (video) {
      pc.addTransceiver(video, {
        direction: "sendonly",
        streams: [this.stream],
        sendEncodings: SIMULCAST_ENCODINGS.map((e) => ({ ...e })),
      });
    }
    if (audio) pc.addTransceiver(audio, { direction: "sendonly", streams: [this.stream] });
    this.watch(pc, "pub");
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    if (this.pub !== pc || this.closed) return;
    this.view.status("connecting media…");
    const reply = await this.sig.publish(pc.localDescription.sdp);
    if (this.pub !== pc || this.closed) return;
    await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    // Tell the server again what is muted: a fresh publish starts unmuted there.
    if (this.audioMuted) await this.sig.mute("audio", true);
    if (this.videoMuted) await this.sig.mute("video", true);
  }

  /** A `call.offer` push: answer it on the subscriber PC. */
  onOffer(frame) {
    this.offerChain = this.offerChain
      .then(() => this.answerOffer(frame))
      .catch((err) => this.view.status(`media negotiation failed: ${err.message || err}`));
  }

  async answerOffer(frame) {
    if (this.closed) return;
    for (const [mid, track] of Object.entries(frame.mids || {})) this.mids.set(mid, track);
    if (!this.sub) {
      const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle" });
      this.sub = pc;
      this.watch(pc, "sub");
      pc.addEventListener("track", (event) => this.onTrack(pc, event));
    }
    const pc = this.sub;
    await pc.setRemoteDescription({ type: "offer", sdp: frame.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    if (this.sub !== pc || this.closed) return;
    await this.sig.answer(pc.localDescription.sdp);
  }

  onTrack(pc, event) {
    if (this.sub !== pc) return;
    const mid = event.transceiver && event.transceiver.mid;
    let trackId = mid !== null && mid !== undefined ? this.mids.get(mid) : undefined;
    // The msid of a forwarded track is "<participant id> <track id>".
    const stream = event.streams && event.streams[0];
    if (!trackId && stream) trackId = event.track.id.includes(".") ? event.track.id : undefined;
    const participantId = trackId ? trackId.split(".")[0] : stream ? stream.id : null;
    if (!participantId || !trackId) return;
    this.view.remoteTrack(participantId, event.track, trackId);
  }

  /** Watch a PC's state: a failed transport asks the server for a fresh start. */
  watch(pc, which) {
    pc.addEventListener("connectionstatechange", () => {
      if (pc !== this.pub && pc !== this.sub) return;
      if (pc.connectionState === "connected") this.view.status("");
      if (pc.connectionState === "failed" && !this.closed) {
        this.view.status(`${which === "pub" ? "sending" : "receiving"} media failed: restarting…`);
        this.restart(true).catch((err) => this.view.status(`restart failed: ${err.message || err}`));
      }
    });
  }

  /**
   * Drop both PCs and publish again: after `call.restart` from the server
   * (`ask` false) or after our own transport failed (`ask` true: tell the
   * server first). The server then sends a new call.offer.
   */
  async restart(ask) {
    this.dropPeers();
    if (ask) await this.sig.restart();
    await this.publish();
  }

  dropPeers() {
    for (const pc of [this.pub, this.sub]) if (pc) pc.close();
    this.pub = null;
    this.sub = null;
    this.mids.clear();
    this.offerChain = Promise.resolve();
  }

  updateParticipant(p) {
    this.participants.set(p.id, p);
    this.view.participant(p);
  }

  removeParticipant(id) {
    this.participants.delete(id);
    this.view.participantLeft(id);
  }

  /** Dispatch a call.* push of this room. */
  onPush(type, frame) {
    if (this.closed) return;
    switch (type) {
      case "call.offer":
        this.onOffer(frame);
        break;
      case "call.participant":
        if (frame.action === "left") this.removeParticipant(frame.participant.id);
        else this.updateParticipant(frame.participant);
        break;
      case "call.speaker":
        this.view.speaker(frame.participant ?? null);
        break;
      case "call.restart":
        this.restart(false).catch((err) => this.view.status(`restart failed: ${err.message || err}`));
        break;
      case "call.ended":
        this.close();
        this.view.ended(frame.reason || "the call ended");
        break;
      default:
        break; // call.track: tracks arrive through the subscriber offer
    }
  }

  /** Mute or unmute one kind; the server stops forwarding it meanwhile. */
  async setMuted(kind, muted) {
    if (!this.stream) return;
    for (const track of kind === "audio" ? this.stream.getAudioTracks() : this.stream.getVideoTracks()) {
      track.enabled = !muted;
    }
    if (kind === "audio") this.audioMuted = muted;
    else this.videoMuted = muted;
    await this.sig.mute(kind, muted);
  }

  /** Tell the server the size at which a remote video track is shown (it picks the layer). */
  quality(trackId, width, height) {
    if (!this.closed) this.sig.quality(trackId, Math.round(width), Math.round(height));
  }

  /** Stats of both PCs, for the call's status line and for tests. */
  async stats() {
    const out = { framesDecoded: 0, framesEncoded: 0, inboundVideo: 0, rids: [], rejoins: [...this.rejoins] };
    if (this.sub) {
      (await this.sub.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") {
          out.inboundVideo += 1;
          out.framesDecoded += s.framesDecoded || 0;
        }
      });
    }
    if (this.pub) {
      (await this.pub.getStats()).forEach((s) => {
        if (s.type === "outbound-rtp" && s.kind === "video") {
          out.framesEncoded += s.framesEncoded || 0;
          if (s.rid) out.rids.push(s.rid);
        }
      });
    }
    return out;
  }

  /** Leave: close the PCs and stop the camera. Safe to call twice. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.dropPeers();
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
    this.view.local(null);
  }
}
