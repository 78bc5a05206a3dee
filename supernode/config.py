"""One settings object for the daemon, read from the environment and `.env`.

Every limit and timeout is named here with a one-line comment. `Settings.check_safe()`
refuses unsafe values at start with a message that says what to change.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from supernode.crypto.keys import KeystoreError, check_passphrase_strength
from supernode.errors import ConfigError

KNOWN_DEFAULT_TOKENS = {"changeme", "change-me", "secret", "token", "operator", "admin"}
MIN_OPERATOR_TOKEN_CHARS = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SUPERNODE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- identity and network -------------------------------------------------------
    # Folder for this daemon's log file (supernode.log). Relative paths are from the
    # working directory.
    data_dir: Path = Path("data")
    # The federation's network file (JSON genesis: members, chain, prices).
    network_file: Path = Path("data/network.json")
    # This operator's encrypted keystore (eth-account keyfile format).
    keystore_file: Path = Path("data/operator.keystore.json")
    # Keystore passphrase; prefer keystore_passphrase_file so it stays out of the environment.
    keystore_passphrase: str | None = None
    # File holding the keystore passphrase (read at start, first line).
    keystore_passphrase_file: Path | None = Path("data/operator.pass")
    # Bearer token for operator-only routes; empty disables the token (the operator then
    # signs a challenge with the node key). At least 32 characters when set.
    operator_token: str = ""

    # --- HTTP server ------------------------------------------------------------------
    # Address the daemon listens on (127.0.0.1 keeps it local).
    host: str = "127.0.0.1"
    # TCP port of the daemon's HTTP API.
    port: int = Field(default=7123, ge=1, le=65535)
    # The URL peers reach this daemon at; defaults to the member URL in the network file.
    public_url: str | None = None
    # Largest request body accepted, in bytes (larger: 413).
    max_body_bytes: int = Field(default=4_000_000, gt=0)
    # Deepest nesting of arrays and objects accepted in a JSON body (deeper: 400).
    max_json_depth: int = Field(default=32, ge=4, le=512)
    # Largest single envelope accepted, in bytes of JSON.
    max_envelope_bytes: int = Field(default=64_000, gt=0)
    # Largest user/supernode message body, in characters.
    max_message_chars: int = Field(default=16_000, gt=0)
    # Seconds a connection may sit with no request in progress (just connected, or
    # between keep-alive requests) before it is closed.
    http_idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Seconds from a request's first byte until its headers must be complete (slowloris).
    http_header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    # Seconds from a request's headers until its body must be complete.
    http_body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Connections one client address may hold at once (members' addresses excepted).
    max_connections_per_address: int = Field(default=64, gt=0)
    # Connections all non-member addresses may hold together; members always get in.
    max_outsider_connections: int = Field(default=1024, gt=0)
    # Challenges one client address may get or answer per minute.
    challenge_requests_per_minute: int = Field(default=120, gt=0)
    # Requests that make the federation store something (price and usage quotes, purchase
    # confirmations, user messages, key revocations) one client address may send per minute.
    anonymous_writes_per_minute: int = Field(default=60, gt=0)
    # How often this daemon gives back the rest of the API keys' reservations it holds
    # once a key expired or was revoked (s).
    reservation_close_interval_s: float = Field(default=10.0, gt=0)
    # OpenAI path: how often this daemon settles the requests it answered at once from
    # API keys' reservations (one quorum round per key for all its requests since) (s).
    settle_interval_s: float = Field(default=0.5, gt=0, le=60)
    # OpenAI path: most credits one API key may have answered but not yet certified; a
    # request past it waits for a settlement (0: one request at a time).
    unsettled_max_credits: int = Field(default=50_000, ge=0)
    # GET requests (menu, status, balances, listings; not /health or /ready) one client
    # address may send per minute.
    anonymous_reads_per_minute: int = Field(default=600, gt=0)
    # The burst each of those limits allows: this many seconds' worth of its rate at once
    # (at least one request).
    anonymous_burst_s: float = Field(default=10.0, gt=0, le=60)
    # Extra client addresses counted as members' (comma-separated IPs), for peers whose
    # connections come from another address than the host in their member URL.
    member_source_addresses: str = ""
    # CPU priority of the daemon (nice 0..19; higher yields more). On a host shared with
    # its Petals nodes, 10 keeps the daemon's bookkeeping from slowing the model (the node
    # runs one generation at a time, so its queue pays for every stolen millisecond).
    cpu_nice: int = Field(default=0, ge=0, le=19)

    # --- ledger -----------------------------------------------------------------------
    # SQLite database file of this daemon's ledger.
    database_file: Path = Path("data/supernode.sqlite")
    # How long a connection waits for a lock before giving up (ms).
    sqlite_busy_timeout_ms: int = Field(default=10_000, gt=0)
    # Most envelopes written in one group-commit transaction.
    write_batch_max: int = Field(default=2000, gt=0)

    # --- chain ------------------------------------------------------------------------
    # JSON-RPC URL of the EVM chain (anvil on the devnet).
    chain_rpc_url: str = "http://127.0.0.1:8545"
    # Chain id the daemon expects; must equal the network file's and the node's.
    chain_id: int | None = None
    # Timeout of one JSON-RPC call (s).
    chain_timeout_s: float = Field(default=5.0, gt=0)
    # Retries of a read-only JSON-RPC call after the first try.
    chain_read_retries: int = Field(default=2, ge=0, le=10)

    # --- envelopes --------------------------------------------------------------------
    # Lifetime given to envelopes this daemon signs (s).
    envelope_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    # Longest lifetime accepted on an incoming envelope (s).
    max_envelope_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    # Accepted clock difference between peers (s).
    clock_skew_s: int = Field(default=30, gt=0)
    # Lifetime of a user/operator authentication challenge (s).
    challenge_ttl_s: int = Field(default=300, gt=0)

    # --- gossip -----------------------------------------------------------------------
    # Timeout of one push of a batch of envelopes to a peer (s).
    push_timeout_s: float = Field(default=5.0, gt=0)
    # Retries of a failed push before leaving the rest to anti-entropy.
    push_retries: int = Field(default=4, ge=0, le=20)
    # First back-off between push retries (s); doubles each try.
    push_backoff_s: float = Field(default=0.2, gt=0)
    # Most envelopes in one push request.
    push_batch_max: int = Field(default=500, gt=0)
    # Most envelopes waiting for one peer; past it the oldest go to anti-entropy.
    push_queue_max: int = Field(default=50_000, gt=0)
    # Seconds a spend certificate, result summary or refund may wait to travel with the
    # next push (under load one push carries many; the next order of a pack brings its
    # voters the certificate before it anyway); 0: at once.
    push_linger_s: float = Field(default=0.2, ge=0, le=5)
    # Seconds between liveness probes of every peer (GET /health): what /ready counts.
    peer_probe_interval_s: float = Field(default=2.0, gt=0)
    # Timeout of one liveness probe (s).
    peer_probe_timeout_s: float = Field(default=2.0, gt=0)
    # Seconds between anti-entropy rounds.
    anti_entropy_interval_s: float = Field(default=2.0, gt=0)
    # Ids per anti-entropy page (and envelopes per fetch).
    anti_entropy_page: int = Field(default=2000, gt=0)
    # Timeout of one anti-entropy request (s).
    anti_entropy_timeout_s: float = Field(default=10.0, gt=0)
    # Longest one anti-entropy round may run (s).
    anti_entropy_round_s: float = Field(default=30.0, gt=0)

    # --- membership -------------------------------------------------------------------
    # Seconds between membership checks (collateral is re-read when the epoch changes
    # or the last reading is older than membership_max_age_s).
    membership_interval_s: float = Field(default=5.0, gt=0)
    # Re-read collateral at least this often even without a new epoch (s).
    membership_max_age_s: float = Field(default=300.0, gt=0)

    # --- credit packs -----------------------------------------------------------------
    # Blocks a price quote stays payable for.
    quote_ttl_blocks: int = Field(default=100, gt=0)
    # Most credits in one pack.
    max_credits_per_pack: int = Field(default=10**9, gt=0)
    # Longest wait for peers' signatures on a quote or a pack (s).
    quorum_timeout_s: float = Field(default=5.0, gt=0)
    # Seconds between tries to finish purchases waiting for confirmations or a quorum.
    pending_purchase_interval_s: float = Field(default=2.0, gt=0)

    # --- inference ----------------------------------------------------------------------
    # Local inference nodes: comma-separated URLs; "openai:" before a URL marks an
    # OpenAI-compatible server, otherwise it speaks the Petals HTTP API.
    petals_nodes: str = ""
    # Credits per prompt token, for models the menu file does not price.
    credits_per_input_token: int = Field(default=1, ge=0)
    # Credits per generated token, for models the menu file does not price.
    credits_per_output_token: int = Field(default=2, ge=0)
    # Most new tokens one request may ask for (a model's own limit may be lower).
    max_new_tokens: int = Field(default=256, gt=0)
    # Most prompt tokens one request may carry.
    max_input_tokens: int = Field(default=2048, gt=0)
    # JSON menu file: [{"model", "credits_per_input_token", "credits_per_output_token",
    # "max_new_tokens", "max_input_tokens"}]; models not in it use the defaults above.
    model_menu_file: Path | None = None
    # Timeout of one generation request to a node (s).
    node_request_timeout_s: float = Field(default=60.0, gt=0)
    # Timeout to connect to a node (s).
    node_connect_timeout_s: float = Field(default=3.0, gt=0)
    # Longest silence between streamed chunks before the node counts as hung (s).
    node_stream_idle_timeout_s: float = Field(default=30.0, gt=0)
    # Nodes tried for one request before giving up (fail-over bound).
    node_max_tries: int = Field(default=3, gt=0)
    # Consecutive failures that open a node's circuit breaker.
    node_breaker_failures: int = Field(default=3, gt=0)
    # Seconds an open breaker waits before one trial request.
    node_breaker_reset_s: float = Field(default=15.0, gt=0)
    # Timeout of one node health check (s).
    node_health_timeout_s: float = Field(default=5.0, gt=0)
    # Seconds between node health checks.
    node_health_interval_s: float = Field(default=5.0, gt=0)
    # How long a usage quote (validate_inference_api_usage_request) stays valid (s).
    usage_quote_ttl_s: int = Field(default=600, gt=0)

    # --- audits and reputation (the federation-wide rules are in the network file) ------
    # Whether this member audits its peers. Off, it still commits and reveals its seeds
    # (so it is still drawn), and each audit it is drawn for and skips counts against it.
    audits_enabled: bool = True
    # Seconds between audit rounds (read the epoch, update the score tables, commit and
    # reveal seeds, draw and start audits).
    audit_interval_s: float = Field(default=2.0, gt=0)
    # Seconds an audit waits after the request's summary arrives (the executor records
    # the result just after it announces it).
    audit_delay_s: float = Field(default=2.0, ge=0, le=3600)
    # Audits running at once on this daemon.
    audit_max_in_flight: int = Field(default=2, ge=1, le=64)
    # Audits started per minute at most (bounds the CPU audits take from the node).
    audit_max_per_minute: int = Field(default=120, ge=1)
    # Timeout of one request for a result to the executor (s).
    audit_fetch_timeout_s: float = Field(default=5.0, gt=0)
    # Requests for one result before it counts as not served (verdict "unavailable").
    audit_fetch_tries: int = Field(default=3, ge=1, le=20)
    # Seconds between those requests (times the try number).
    audit_retry_s: float = Field(default=2.0, gt=0)
    # Logit margin under which a token that is not the auditor's top choice still passes
    # (near-ties differ between machines; measured drift on one CPU kind is under 1e-5).
    audit_tolerance: float = Field(default=1e-3, ge=0, le=100)

    # --- peer scoring -----------------------------------------------------------------
    # Penalty points for an invalid envelope (bad signature, wrong binding, bad schema).
    penalty_invalid: int = Field(default=10, gt=0)
    # Points within penalty_window_s that get a peer banned.
    ban_threshold: int = Field(default=50, gt=0)
    # Window over which penalty points add up (s).
    penalty_window_s: int = Field(default=3600, gt=0)
    # How long a ban lasts (s).
    ban_duration_s: int = Field(default=3600, gt=0)

    # --- logs -------------------------------------------------------------------------
    # Log level: DEBUG, INFO, WARNING, ERROR.
    log_level: str = "INFO"
    # Log lines kept in memory for /show_logs and the log stream.
    log_ring_lines: int = Field(default=20_000, gt=0)

    def check_safe(self) -> None:
        """Refuse unsafe settings at start."""
        problems: list[str] = []
        if self.chain_id is None:
            problems.append("SUPERNODE_CHAIN_ID is not set (31337 for the devnet)")
        tok = self.operator_token
        if tok and (tok.lower() in KNOWN_DEFAULT_TOKENS or len(tok) < MIN_OPERATOR_TOKEN_CHARS):
            problems.append(
                f"SUPERNODE_OPERATOR_TOKEN is a default or shorter than "
                f"{MIN_OPERATOR_TOKEN_CHARS} characters; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if self.keystore_passphrase is not None and self.keystore_passphrase_file is None:
            try:
                check_passphrase_strength(self.keystore_passphrase)
            except KeystoreError as exc:
                problems.append(str(exc))
        if self.max_envelope_bytes > self.max_body_bytes:
            problems.append("SUPERNODE_MAX_ENVELOPE_BYTES is larger than SUPERNODE_MAX_BODY_BYTES")
        if self.clock_skew_s >= self.envelope_ttl_s:
            problems.append("SUPERNODE_CLOCK_SKEW_S must be shorter than SUPERNODE_ENVELOPE_TTL_S")
        if self.envelope_ttl_s > self.max_envelope_ttl_s:
            problems.append("SUPERNODE_ENVELOPE_TTL_S is over SUPERNODE_MAX_ENVELOPE_TTL_S")
        if problems:
            raise ConfigError("refusing to start:\n  - " + "\n  - ".join(problems))
