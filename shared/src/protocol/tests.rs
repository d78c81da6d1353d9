use std::io::Cursor;

use super::*;

fn chat_request(request_id: u64) -> GenerateRequest {
    GenerateRequest {
        request_id,
        prompt: Prompt::Chat {
            // Structured turns (tool calls, names) travel inside the JSON text as the
            // controller built it. A literal, so the fingerprint below never depends on
            // serde_json's key order.
            messages_json: concat!(
                r#"[{"role":"system","content":"Be brief."},"#,
                r#"{"role":"assistant","content":"","name":"bot","#,
                r#""tool_calls":[{"id":"c1","type":"function"}]},"#,
                r#"{"role":"tool","content":"22°C, ☀","tool_call_id":"c1"}]"#
            )
            .into(),
            tools_json: Some(r#"[{"type":"function","function":{"name":"w"}}]"#.into()),
            add_generation_prompt: true,
            template_kwargs_json: Some(r#"{"enable_thinking":false}"#.into()),
        },
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            min_p: 0.05,
            repetition_penalty: 1.1,
            repetition_context: 64,
            presence_penalty: 0.5,
            frequency_penalty: -0.25,
            logit_bias: vec![(0, -100.0), (u32::MAX, 2.5)],
            seed: Some(u64::MAX),
        },
        max_tokens: Some(256),
        stop: vec!["\n\n".into(), "</s>".into()],
        logprobs: Some(5),
        output: OutputSpec {
            format: AnswerFormat::JsonSchema {
                schema_json: r#"{"type":"object"}"#.into(),
                strict: true,
            },
            tool_choice: ToolChoice::Function("w".into()),
            parallel_tool_calls: false,
        },
    }
}

fn to_worker_samples() -> Vec<ToWorker> {
    vec![
        ToWorker::Generate(chat_request(1)),
        ToWorker::Generate(GenerateRequest {
            request_id: 2,
            prompt: Prompt::Text("Once upon a time".into()),
            sampling: SamplingParams::default(),
            max_tokens: None,
            stop: vec![],
            logprobs: None,
            output: OutputSpec::default(),
        }),
        ToWorker::Generate(GenerateRequest {
            request_id: u64::MAX,
            prompt: Prompt::Tokens(vec![1, 2, 3, 128_000, u32::MAX]),
            sampling: SamplingParams::greedy(),
            max_tokens: Some(0),
            stop: vec![String::new()],
            logprobs: Some(0),
            output: OutputSpec::default(),
        }),
        ToWorker::Generate(GenerateRequest {
            request_id: 3,
            prompt: Prompt::Chat {
                messages_json: r#"[{"role":"user","content":"¿Qué tal?"}]"#.into(),
                tools_json: None,
                add_generation_prompt: false,
                template_kwargs_json: None,
            },
            sampling: SamplingParams::default(),
            max_tokens: Some(u32::MAX),
            stop: vec![],
            logprobs: Some(u32::MAX),
            output: OutputSpec {
                format: AnswerFormat::JsonObject,
                tool_choice: ToolChoice::Required,
                parallel_tool_calls: true,
            },
        }),
        ToWorker::Cancel { request_id: 7 },
        ToWorker::GetStats,
        ToWorker::Shutdown,
        ToWorker::Embed(EmbedRequest {
            request_id: 8,
            inputs: vec![
                EmbedInput::Text("héllo".into()),
                EmbedInput::Tokens(vec![1, 2, u32::MAX]),
            ],
        }),
    ]
}

fn from_worker_samples() -> Vec<FromWorker> {
    let top = TopLogprob {
        token_id: 9,
        token: "lo".into(),
        logprob: -1.5,
        bytes: b"lo".to_vec(),
    };
    vec![
        FromWorker::Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_version: "0.1.0".into(),
            pid: 4242,
        },
        FromWorker::Ready(ModelFacts {
            model_type: "llama".into(),
            num_layers: 32,
            context_length: 131_072,
            vocab_size: 128_256,
            quantization: "4-bit g64".into(),
            weights_bytes: 4_500_000_000,
            load_seconds: 3.25,
            eos_token_ids: vec![128_001, 128_009],
        }),
        FromWorker::LoadFailed {
            message: "missing model.safetensors".into(),
        },
        FromWorker::Accepted {
            request_id: 1,
            prompt_tokens: 12,
        },
        FromWorker::Accepted {
            request_id: u64::MAX,
            prompt_tokens: u32::MAX,
        },
        FromWorker::Chunk {
            request_id: 1,
            deltas: vec![Delta::Text {
                text: "Hello, wörld".into(),
                tokens: 2,
            }],
            logprobs: vec![
                TokenLogprob {
                    token_id: 9906,
                    token: "Hello".into(),
                    logprob: -0.01,
                    bytes: b"Hello".to_vec(),
                    top: vec![top.clone(), top],
                },
                TokenLogprob {
                    token_id: 11,
                    // Half a UTF-8 character: the exact bytes are not valid UTF-8.
                    token: "\u{FFFD}".into(),
                    logprob: f32::NEG_INFINITY,
                    bytes: vec![0xC3],
                    top: vec![],
                },
            ],
        },
        FromWorker::Chunk {
            request_id: 2,
            deltas: vec![],
            logprobs: vec![],
        },
        // Every delta kind, several in one chunk, in order.
        FromWorker::Chunk {
            request_id: 3,
            deltas: vec![
                Delta::Reasoning {
                    text: "The user wants the weather.".into(),
                    tokens: 6,
                },
                Delta::Text {
                    text: String::new(),
                    tokens: 1,
                },
                Delta::ToolCall {
                    index: 0,
                    id: Some("call_1".into()),
                    name: Some("weather".into()),
                    arguments: r#"{"city":"#.into(),
                    tokens: 5,
                },
                Delta::ToolCall {
                    index: 0,
                    id: None,
                    name: None,
                    arguments: r#""Zürich"}"#.into(),
                    tokens: u32::MAX,
                },
            ],
            logprobs: vec![],
        },
        FromWorker::Done {
            request_id: 1,
            finish_reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 2,
                cached_prompt_tokens: 8,
                reasoning_tokens: 1,
            },
            timings: Timings {
                queue_ms: 0.5,
                prompt_ms: 12.0,
                generation_ms: 40.25,
                time_to_first_token_ms: 13.0,
            },
        },
        FromWorker::Done {
            request_id: 2,
            finish_reason: FinishReason::Length,
            usage: Usage::default(),
            timings: Timings::default(),
        },
        FromWorker::Done {
            request_id: 3,
            finish_reason: FinishReason::Cancelled,
            usage: Usage::default(),
            timings: Timings::default(),
        },
        FromWorker::Error {
            request_id: Some(4),
            kind: ErrorKind::InvalidRequest,
            message: "bad".into(),
        },
        FromWorker::Error {
            request_id: Some(5),
            kind: ErrorKind::ContextLengthExceeded,
            message: "too long".into(),
        },
        FromWorker::Error {
            request_id: Some(6),
            kind: ErrorKind::Engine,
            message: "mlx".into(),
        },
        FromWorker::Error {
            request_id: None,
            kind: ErrorKind::Internal,
            message: "bug".into(),
        },
        FromWorker::Error {
            request_id: Some(7),
            kind: ErrorKind::Overloaded,
            message: "queue full".into(),
        },
        FromWorker::Stats(WorkerStats {
            active_requests: 1,
            queued_requests: 2,
            prompt_cache_hits: 3,
            prompt_cache_tokens: 4,
            peak_memory_bytes: u64::MAX,
            active_memory_bytes: 5,
        }),
        FromWorker::Embeddings {
            request_id: 8,
            vectors: vec![vec![0.5, -0.25, f32::MIN_POSITIVE], vec![]],
            prompt_tokens: 9,
        },
        FromWorker::Progress {
            request_id: 10,
            done: 2048,
            total: u32::MAX,
        },
    ]
}

/// Exhaustive matches: adding a variant breaks the build here until the samples cover it.
#[test]
fn samples_cover_every_variant() {
    use std::collections::BTreeSet;

    let to: BTreeSet<u8> = to_worker_samples()
        .iter()
        .map(|m| match m {
            ToWorker::Generate(GenerateRequest { prompt, .. }) => match prompt {
                Prompt::Chat { .. } => 0,
                Prompt::Text(_) => 1,
                Prompt::Tokens(_) => 2,
            },
            ToWorker::Cancel { .. } => 3,
            ToWorker::GetStats => 4,
            ToWorker::Shutdown => 5,
            ToWorker::Embed(_) => 6,
        })
        .collect();
    assert_eq!(to, (0..=6).collect());

    let from: BTreeSet<u8> = from_worker_samples()
        .iter()
        .map(|m| match m {
            FromWorker::Hello { .. } => 0,
            FromWorker::Ready(_) => 1,
            FromWorker::LoadFailed { .. } => 2,
            FromWorker::Accepted { .. } => 3,
            FromWorker::Chunk { .. } => 4,
            FromWorker::Done { finish_reason, .. } => match finish_reason {
                FinishReason::Stop => 5,
                FinishReason::Length => 6,
                FinishReason::Cancelled => 7,
            },
            FromWorker::Error { kind, .. } => match kind {
                ErrorKind::InvalidRequest => 8,
                ErrorKind::ContextLengthExceeded => 9,
                ErrorKind::Engine => 10,
                ErrorKind::Internal => 11,
                ErrorKind::Overloaded => 12,
            },
            FromWorker::Stats(_) => 13,
            FromWorker::Embeddings { .. } => 14,
            FromWorker::Progress { .. } => 15,
        })
        .collect();
    assert_eq!(from, (0..=15).collect());

    let deltas: BTreeSet<u8> = from_worker_samples()
        .iter()
        .flat_map(|m| match m {
            FromWorker::Chunk { deltas, .. } => deltas.clone(),
            _ => Vec::new(),
        })
        .map(|d| match d {
            Delta::Text { .. } => 0,
            Delta::Reasoning { .. } => 1,
            Delta::ToolCall { .. } => 2,
        })
        .collect();
    assert_eq!(deltas, (0..=2).collect());
}

#[test]
fn a_delta_reports_its_tokens_whatever_its_kind() {
    let tokens: Vec<u32> = from_worker_samples()
        .iter()
        .flat_map(|m| match m {
            FromWorker::Chunk { deltas, .. } => deltas.iter().map(Delta::tokens).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(tokens, [2, 6, 1, 5, u32::MAX]);
}

#[test]
fn a_user_prompt_is_one_user_message_in_json() {
    let Prompt::Chat {
        messages_json,
        tools_json,
        add_generation_prompt,
        template_kwargs_json,
    } = Prompt::user("say \"hi\" ☀")
    else {
        panic!("a chat prompt");
    };
    let messages: serde_json::Value = serde_json::from_str(&messages_json).expect("JSON");
    assert_eq!(
        messages,
        serde_json::json!([{"role": "user", "content": "say \"hi\" ☀"}])
    );
    assert_eq!(tools_json, None);
    assert_eq!(template_kwargs_json, None);
    assert!(add_generation_prompt);
}

fn round_trip_blocking<T>(samples: &[T])
where
    T: Encode + Decode<()> + PartialEq + std::fmt::Debug,
{
    let mut wire = Vec::new();
    for msg in samples {
        write_frame_blocking(&mut wire, msg).expect("write");
    }
    let mut r = Cursor::new(wire);
    for msg in samples {
        let got: T = read_frame_blocking(&mut r).expect("read").expect("a frame");
        assert_eq!(&got, msg);
    }
    assert!(read_frame_blocking::<T, _>(&mut r).expect("eof").is_none());

    for msg in samples {
        let frame = encode_frame(msg).expect("encode");
        let len = u32::from_le_bytes(frame[..4].try_into().expect("prefix")) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(&decode_payload::<T>(&frame[4..]).expect("decode"), msg);
    }
}

#[test]
fn every_message_round_trips_blocking() {
    round_trip_blocking(&to_worker_samples());
    round_trip_blocking(&from_worker_samples());
}

/// A 64-byte duplex buffer forces frames to cross it in several partial reads and writes.
async fn round_trip_async<T>(samples: Vec<T>)
where
    T: Encode + Decode<()> + PartialEq + std::fmt::Debug + Clone + Send + Sync + 'static,
{
    let (mut a, mut b) = tokio::io::duplex(64);
    let sent = samples.clone();
    let writer = tokio::spawn(async move {
        for msg in &sent {
            write_frame(&mut a, msg).await.expect("write");
        }
        // Dropping `a` closes the stream: the reader must then see a clean EOF.
    });
    for msg in &samples {
        let got: T = read_frame(&mut b).await.expect("read").expect("a frame");
        assert_eq!(&got, msg);
    }
    assert!(read_frame::<T, _>(&mut b).await.expect("eof").is_none());
    writer.await.expect("writer task");
}

#[tokio::test]
async fn every_message_round_trips_async() {
    round_trip_async(to_worker_samples()).await;
    round_trip_async(from_worker_samples()).await;
}

#[tokio::test]
async fn blocking_and_async_frames_are_the_same_bytes() {
    for msg in from_worker_samples() {
        let mut blocking = Vec::new();
        write_frame_blocking(&mut blocking, &msg).expect("write");
        let mut async_out = Vec::new();
        write_frame(&mut async_out, &msg).await.expect("write");
        assert_eq!(blocking, async_out);
    }
}

/// Hello must decode the same in every protocol version (see its doc): pin its bytes.
#[test]
fn hello_wire_bytes_are_pinned() {
    let hello = FromWorker::Hello {
        protocol_version: 1,
        worker_version: "v".into(),
        pid: 42,
    };
    // prefix 5, variant 0, version 1 (varint), string length 1, 'v', pid 42 (varint).
    assert_eq!(
        encode_frame(&hello).expect("encode"),
        [5, 0, 0, 0, 0, 1, 1, b'v', 42]
    );
    assert_eq!(
        encode_frame(&ToWorker::Cancel { request_id: 7 }).expect("encode"),
        [2, 0, 0, 0, 1, 7]
    );
}

/// Any change to the message types changes these bytes. If this fails, bump PROTOCOL_VERSION
/// and update the fingerprint (or, if only sample values changed, just the fingerprint).
#[test]
fn wire_format_fingerprint() {
    let mut wire = Vec::new();
    for msg in to_worker_samples() {
        wire.extend(encode_frame(&msg).expect("encode"));
    }
    for msg in from_worker_samples() {
        wire.extend(encode_frame(&msg).expect("encode"));
    }
    // FNV-1a, 64 bit.
    let hash = wire.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    assert_eq!(
        (PROTOCOL_VERSION, wire.len(), format!("{hash:016x}")),
        (5, 1188, "80a8d19b53f1e42c".to_string()),
        "wire format changed: bump PROTOCOL_VERSION, then update this fingerprint"
    );
}

#[test]
fn oversized_length_prefix_is_refused_before_reading_the_payload() {
    for len in [u32::MAX, MAX_FRAME_BYTES as u32 + 1] {
        let mut wire = len.to_le_bytes().to_vec();
        wire.extend_from_slice(b"rest");
        let mut r = Cursor::new(wire);
        match read_frame_blocking::<ToWorker, _>(&mut r) {
            Err(ProtocolError::FrameTooLarge { len: got, max }) => {
                assert_eq!(got, len as usize);
                assert_eq!(max, MAX_FRAME_BYTES);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        // Nothing past the prefix was consumed, so no payload buffer was made for it.
        assert_eq!(r.position(), 4);
    }
    // Exactly the maximum is allowed: the reader goes on and finds the payload missing.
    let wire = (MAX_FRAME_BYTES as u32).to_le_bytes();
    assert!(matches!(
        read_frame_blocking::<ToWorker, _>(&mut &wire[..]),
        Err(ProtocolError::TruncatedFrame)
    ));
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_async() {
    let mut wire = u32::MAX.to_le_bytes().to_vec();
    wire.extend_from_slice(b"rest");
    let mut r = &wire[..];
    assert!(matches!(
        read_frame::<FromWorker, _>(&mut r).await,
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    assert_eq!(r, b"rest");
}

#[test]
fn oversized_message_is_refused_on_encode() {
    let huge = ToWorker::Generate(GenerateRequest {
        prompt: Prompt::Text("a".repeat(MAX_FRAME_BYTES)),
        ..chat_request(1)
    });
    match encode_frame(&huge) {
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            assert!(len > MAX_FRAME_BYTES);
            assert_eq!(max, MAX_FRAME_BYTES);
        }
        other => panic!("expected FrameTooLarge, got {:?}", other.map(|f| f.len())),
    }
    let mut out = Vec::new();
    assert!(matches!(
        write_frame_blocking(&mut out, &huge),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    assert!(out.is_empty(), "nothing may be written for a refused frame");
}

/// bincode's decode limit counts memory, not wire bytes: a token id is 1 byte on the wire but 4
/// in memory. With the limit at MAX_FRAME_BYTES, this legitimate frame was refused.
#[test]
fn near_limit_token_prompt_decodes_despite_bincode_counting_memory() {
    let msg = ToWorker::Generate(GenerateRequest {
        prompt: Prompt::Tokens(vec![7; MAX_FRAME_BYTES - 4096]),
        ..chat_request(1)
    });
    let frame = encode_frame(&msg).expect("fits");
    assert!(frame.len() - 4 <= MAX_FRAME_BYTES);
    let got: ToWorker = read_frame_blocking(&mut &frame[..])
        .expect("decodes")
        .expect("a frame");
    assert!(got == msg);
}

#[test]
fn garbage_payload_is_a_decode_error() {
    // 0xFF is no variant of either enum.
    for payload in [&[0xFF_u8, 0xFF, 0xFF][..], &[][..], &[0xFB][..]] {
        assert!(matches!(
            decode_payload::<ToWorker>(payload),
            Err(ProtocolError::Decode(_))
        ));
        assert!(matches!(
            decode_payload::<FromWorker>(payload),
            Err(ProtocolError::Decode(_))
        ));
    }
    let mut wire = 3u32.to_le_bytes().to_vec();
    wire.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
    assert!(matches!(
        read_frame_blocking::<ToWorker, _>(&mut &wire[..]),
        Err(ProtocolError::Decode(_))
    ));
    // Invalid UTF-8 in a String field.
    let bad_utf8 = [2_u8, 2, 0xC3, 0x28]; // LoadFailed { message: [C3 28] }
    assert!(matches!(
        decode_payload::<FromWorker>(&bad_utf8),
        Err(ProtocolError::Decode(_))
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut payload = encode_frame(&ToWorker::GetStats).expect("encode")[4..].to_vec();
    payload.push(0);
    assert!(matches!(
        decode_payload::<ToWorker>(&payload),
        Err(ProtocolError::TrailingBytes)
    ));
    let mut wire = (payload.len() as u32).to_le_bytes().to_vec();
    wire.extend_from_slice(&payload);
    assert!(matches!(
        read_frame_blocking::<ToWorker, _>(&mut &wire[..]),
        Err(ProtocolError::TrailingBytes)
    ));
}

#[test]
fn frame_truncated_mid_payload_or_mid_prefix() {
    let frame = encode_frame(&ToWorker::Generate(chat_request(1))).expect("encode");
    for cut in [1, 3, 4, 5, frame.len() - 1] {
        assert!(
            matches!(
                read_frame_blocking::<ToWorker, _>(&mut &frame[..cut]),
                Err(ProtocolError::TruncatedFrame)
            ),
            "cut at {cut}"
        );
    }
}

#[tokio::test]
async fn frame_truncated_async() {
    let frame = encode_frame(&FromWorker::Ready(ModelFacts {
        model_type: "qwen2".into(),
        num_layers: 1,
        context_length: 2,
        vocab_size: 3,
        quantization: "none".into(),
        weights_bytes: 4,
        load_seconds: 5.0,
        eos_token_ids: vec![6],
    }))
    .expect("encode");
    for cut in [2, frame.len() - 1] {
        // The writer closes after part of a frame, as a worker killed mid-write would.
        let (mut a, mut b) = tokio::io::duplex(16);
        let part = frame[..cut].to_vec();
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut a, &part)
                .await
                .expect("write");
        });
        assert!(
            matches!(
                read_frame::<FromWorker, _>(&mut b).await,
                Err(ProtocolError::TruncatedFrame)
            ),
            "cut at {cut}"
        );
        writer.await.expect("writer task");
    }
}

#[tokio::test]
async fn clean_eof_is_none() {
    let mut empty: &[u8] = &[];
    assert!(read_frame::<ToWorker, _>(&mut empty)
        .await
        .expect("clean")
        .is_none());
    assert!(read_frame_blocking::<FromWorker, _>(&mut &[][..])
        .expect("clean")
        .is_none());

    let (a, mut b) = tokio::io::duplex(16);
    drop(a);
    assert!(read_frame::<FromWorker, _>(&mut b)
        .await
        .expect("clean")
        .is_none());
}

#[tokio::test]
async fn back_to_back_frames_in_one_buffer_decode_in_order() {
    let first = ToWorker::Cancel { request_id: 1 };
    let second = ToWorker::Generate(chat_request(2));
    let mut wire = encode_frame(&first).expect("encode");
    wire.extend(encode_frame(&second).expect("encode"));

    let mut r = &wire[..];
    assert_eq!(read_frame(&mut r).await.expect("1st"), Some(first.clone()));
    assert_eq!(read_frame(&mut r).await.expect("2nd"), Some(second.clone()));
    assert_eq!(read_frame::<ToWorker, _>(&mut r).await.expect("eof"), None);

    let mut r = Cursor::new(wire);
    assert_eq!(read_frame_blocking(&mut r).expect("1st"), Some(first));
    assert_eq!(read_frame_blocking(&mut r).expect("2nd"), Some(second));
    assert_eq!(
        read_frame_blocking::<ToWorker, _>(&mut r).expect("eof"),
        None
    );
}

#[test]
fn sampling_defaults() {
    let d = SamplingParams::default();
    assert_eq!(
        (d.temperature, d.top_p, d.top_k, d.min_p),
        (1.0, 1.0, 0, 0.0)
    );
    assert_eq!(d.repetition_penalty, 1.0);
    assert_eq!((d.presence_penalty, d.frequency_penalty), (0.0, 0.0));
    assert!(d.logit_bias.is_empty() && d.seed.is_none());
    let g = SamplingParams::greedy();
    assert_eq!(g.temperature, 0.0);
    assert_eq!(
        SamplingParams {
            temperature: 1.0,
            ..g
        },
        d
    );
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..1000 {
        let len = rng.below(256);
        let bytes = rng.bytes(len);
        let _ = decode_payload::<ToWorker>(&bytes);
        let _ = decode_payload::<FromWorker>(&bytes);
        // Also through the reader, with the random bytes' own first 4 bytes as a prefix.
        let _ = read_frame_blocking::<FromWorker, _>(&mut &bytes[..]);
    }
}

/// Random bytes mostly fail on the first byte; flipping bytes of valid payloads reaches deep
/// into the decoders (lengths, Option tags, UTF-8, nested enums).
#[test]
fn mutated_valid_payloads_never_panic() {
    let payloads: Vec<(bool, Vec<u8>)> = to_worker_samples()
        .iter()
        .map(|m| (true, encode_frame(m).expect("encode")[4..].to_vec()))
        .chain(
            from_worker_samples()
                .iter()
                .map(|m| (false, encode_frame(m).expect("encode")[4..].to_vec())),
        )
        .collect();
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    for _ in 0..1000 {
        let (to_worker, base) = &payloads[rng.below(payloads.len())];
        let mut bytes = base.clone();
        for _ in 0..=rng.below(4) {
            let i = rng.below(bytes.len());
            bytes[i] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            bytes.truncate(rng.below(bytes.len() + 1));
        }
        // A mutation that still decodes must re-encode.
        if *to_worker {
            if let Ok(m) = decode_payload::<ToWorker>(&bytes) {
                encode_frame(&m).expect("re-encode");
            }
        } else if let Ok(m) = decode_payload::<FromWorker>(&bytes) {
            encode_frame(&m).expect("re-encode");
        }
    }
}
