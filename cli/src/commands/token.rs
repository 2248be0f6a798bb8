//! `switchboard token`: mint a token gateways accept, for trying things out, scripts and
//! services that mint their own: signed with an HMAC secret (the gateways' `--jwt-secret`) or a
//! PEM private key (whose public key the gateways have, as a file or in a JWKS), naming a `kid`
//! if asked, and carrying the grants (`topics`, `tools`, `register`, a subscription token's
//! `topic`), the audience and the issuer the gateways check.
//!
//! Everything the gateway would refuse in a token (a malformed pattern, an unknown operation,
//! an invalid topic) is refused here first, naming the flag (exit 64).

use std::collections::BTreeMap;
use std::path::PathBuf;

use switchboard_core::auth::{
    self, Algorithm, Audience, Claims, Grants, Ops, SigningKey, check_tool_pattern,
    check_topic_pattern,
};
use switchboard_core::clock::now_secs;

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The HMAC secret the gateways verify with: their --jwt-secret as is (with several, one
    /// per line, the first signs; a kid:<KID>:<SECRET> one names its kid).
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true,
        value_delimiter = '\n',
        value_name = "SECRET"
    )]
    secret: Vec<String>,
    /// Sign with this PEM private key instead of a secret: RSA (PKCS#1 or PKCS#8), EC P-256 or
    /// P-384 (PKCS#8), or Ed25519.
    #[arg(long, env = "SWITCHBOARD_TOKEN_PRIVATE_KEY", value_name = "FILE")]
    private_key: Option<PathBuf>,
    /// The signature algorithm: HS256 (the default), HS384 or HS512 with a secret; RS256,
    /// RS384, RS512, PS256, PS384, PS512 with an RSA key, ES256 or ES384 with an EC key, EdDSA
    /// with an Ed25519 key [default with a key: RS256, ES256, ES384 or EdDSA by its type].
    #[arg(long, env = "SWITCHBOARD_TOKEN_ALG", value_name = "ALG", value_parser = algorithm)]
    alg: Option<Algorithm>,
    /// The key id (`kid`) in the header, by which gateways pick their key.
    #[arg(long, env = "SWITCHBOARD_TOKEN_KID", value_name = "KID")]
    kid: Option<String>,
    /// The subject (`sub`): who the token speaks for.
    #[arg(long, env = "SWITCHBOARD_TOKEN_SUB")]
    sub: String,
    /// Seconds until the token expires; 0 for a token without `exp`.
    #[arg(long, env = "SWITCHBOARD_TOKEN_TTL_SECS", default_value_t = 3600)]
    ttl_secs: u64,
    /// A topic grant PATTERN=OPS (OPS: sub, pub or sub,pub), e.g. 'chat:*=sub,pub'.
    /// Repeatable; the variable takes grants separated by `;`.
    #[arg(long = "topics", env = "SWITCHBOARD_TOKEN_TOPICS", value_delimiter = ';', value_name = "PATTERN=OPS", value_parser = topic_grant)]
    topics: Vec<TopicGrant>,
    /// A tool grant: a tool name or a pattern (`search.*`). Repeatable; the variable takes
    /// patterns separated by `,`.
    #[arg(long = "tools", env = "SWITCHBOARD_TOKEN_TOOLS", value_delimiter = ',', value_name = "PATTERN", value_parser = tool_grant)]
    tools: Vec<String>,
    /// A register grant: a tool name or a pattern (`alice.*`) the holder may offer to others
    /// from its socket (`tools/register`). Repeatable; the variable takes patterns separated
    /// by `,`.
    #[arg(long = "register", env = "SWITCHBOARD_TOKEN_REGISTER", value_delimiter = ',', value_name = "PATTERN", value_parser = tool_grant)]
    register: Vec<String>,
    /// Make a subscription token for this one topic (claim `topic`): a client gives it to
    /// `subscribe {topic, token}`.
    #[arg(long, env = "SWITCHBOARD_TOKEN_TOPIC", value_name = "NAME", value_parser = topic_name)]
    topic: Option<String>,
    /// The audience (`aud`) the gateways' --jwt-audience expects. Repeatable; the variable
    /// takes audiences separated by `,`.
    #[arg(
        long,
        env = "SWITCHBOARD_TOKEN_AUD",
        value_delimiter = ',',
        value_name = "AUD"
    )]
    aud: Vec<String>,
    /// The issuer (`iss`) the gateways' --jwt-issuer expects.
    #[arg(long, env = "SWITCHBOARD_TOKEN_ISS", value_name = "ISS")]
    iss: Option<String>,
}

/// One `--topics PATTERN=OPS`.
#[derive(Debug, Clone)]
struct TopicGrant {
    pattern: String,
    ops: Ops,
}

fn topic_grant(s: &str) -> Result<TopicGrant, String> {
    let (pattern, ops) = s
        .split_once('=')
        .ok_or("write PATTERN=OPS, e.g. 'chat:*=sub,pub'")?;
    let pattern = pattern.trim();
    check_topic_pattern(pattern)?;
    let ops = Ops::parse(ops)?;
    if ops == Ops::NONE {
        return Err(format!(
            "{pattern}: OPS grants nothing (sub, pub or sub,pub)"
        ));
    }
    Ok(TopicGrant {
        pattern: pattern.to_owned(),
        ops,
    })
}

fn tool_grant(s: &str) -> Result<String, String> {
    let s = s.trim();
    check_tool_pattern(s)?;
    Ok(s.to_owned())
}

fn topic_name(s: &str) -> Result<String, String> {
    switchboard_protocol::topic::validate(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|_| {
        "one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, \
         EdDSA"
            .to_owned()
    })
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let usage = |m: String| Failure::Usage(m);
    let key = signing_key(&args).map_err(usage)?;
    let claims = claims(&args).map_err(usage)?;
    let token = auth::mint_with(&key, &claims).map_err(|e| usage(format!("--sub: {e}")))?;
    println!("{token}");
    Ok(())
}

fn signing_key(args: &Args) -> Result<SigningKey, String> {
    let key = match (&args.private_key, args.secret.first()) {
        (Some(path), _) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--private-key {}: cannot read it: {e}", path.display()))?;
            SigningKey::from_pem(&pem, args.alg)
                .map_err(|e| format!("--private-key {}: {e}", path.display()))?
        }
        (None, Some(spec)) => {
            let (kid, secret) = auth::split_kid(spec, "SECRET")
                .map_err(|e| format!("--secret (SWITCHBOARD_JWT_SECRET): {e}"))?;
            if secret.is_empty() {
                return Err("--secret (SWITCHBOARD_JWT_SECRET) is empty".into());
            }
            let key = SigningKey::secret(args.alg.unwrap_or(Algorithm::HS256), secret.as_bytes())
                .map_err(|e| format!("--alg: {e}"))?;
            match kid {
                Some(kid) => key.with_kid(kid),
                None => key,
            }
        }
        (None, None) => {
            return Err(
                "give --secret (SWITCHBOARD_JWT_SECRET) or --private-key to sign with".into(),
            );
        }
    };
    Ok(match &args.kid {
        Some(kid) if kid.is_empty() => return Err("--kid is empty".into()),
        Some(kid) => key.with_kid(kid.as_str()),
        None => key,
    })
}

fn claims(args: &Args) -> Result<Claims, String> {
    if args.sub.is_empty() {
        return Err("--sub is empty".into());
    }
    let now = now_secs();
    let mut topics: BTreeMap<String, Ops> = BTreeMap::new();
    for g in &args.topics {
        let ops = topics.entry(g.pattern.clone()).or_default();
        *ops = ops.union(g.ops);
    }
    let topics = topics
        .into_iter()
        .map(|(pattern, ops)| {
            let names = [(ops.sub, "sub"), (ops.publish, "pub")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| name.to_string())
                .collect();
            (pattern, names)
        })
        .collect::<BTreeMap<_, _>>();
    if args.aud.iter().chain(&args.iss).any(String::is_empty) {
        return Err("--aud and --iss must not be empty".into());
    }
    let claims = Claims {
        sub: args.sub.clone(),
        exp: (args.ttl_secs > 0).then(|| now + args.ttl_secs),
        iat: Some(now),
        iss: args.iss.clone(),
        aud: match args.aud.as_slice() {
            [] => None,
            [one] => Some(Audience::One(one.clone())),
            many => Some(Audience::Many(many.to_vec())),
        },
        topics: (!topics.is_empty()).then_some(topics),
        tools: (!args.tools.is_empty()).then(|| args.tools.clone()),
        register: (!args.register.is_empty()).then(|| args.register.clone()),
        topic: args.topic.clone(),
        ..Claims::default()
    };
    // What the gateway will read: refused here rather than there.
    Grants::from_claims(&claims, true)
        .map_err(|e| format!("--topics, --tools, --register: {e}"))?;
    Ok(claims)
}
