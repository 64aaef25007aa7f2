//! The versioned schema of each backend. A migration is applied once, in order, in one
//! transaction with the version it brings; a store newer than this binary is refused (a
//! downgrade would misread it). Applied at attach and by `netboot-xdp db migrate -c FILE`.

/// One step of a schema.
pub struct Migration {
    pub version: u32,
    pub what: &'static str,
    pub sql: &'static str,
}

/// The provisioning tables (issue 15) of either backend, which differ only in how a key
/// counts up and in the boolean type.
macro_rules! provisioning_tables {
    ($serial_key:literal, $boolean:literal) => {
        concat!(
            "CREATE TABLE netboot_hosts (mac text PRIMARY KEY, doc text NOT NULL);
             CREATE TABLE netboot_nodes (mac text PRIMARY KEY, intent text NOT NULL, intent_once ", $boolean, " NOT NULL,
                                         boot_token text, updated bigint NOT NULL);
             CREATE TABLE netboot_events (id ", $serial_key, ", mac text NOT NULL, at bigint NOT NULL,
                                          event text NOT NULL, message text NOT NULL);
             CREATE INDEX netboot_events_mac ON netboot_events (mac);
             CREATE TABLE netboot_audit (id ", $serial_key, ", at bigint NOT NULL, who text NOT NULL,
                                         action text NOT NULL, target text NOT NULL, detail text NOT NULL);
             -- Every provisioning write bumps it: what the other members poll.
             CREATE TABLE netboot_provision_rev (rev bigint NOT NULL);
             INSERT INTO netboot_provision_rev VALUES (0);"
        )
    };
}

/// Machines seen asking (discovery, issue 15): the same in either backend.
const DISCOVERED: &str = "CREATE TABLE netboot_discovered (mac text PRIMARY KEY, first_seen bigint NOT NULL, last_seen bigint NOT NULL,
        class text NOT NULL, arch integer, uuid text, vendor_class text, relay text);
     CREATE INDEX netboot_discovered_last_seen ON netboot_discovered (last_seen);";

/// DHCPv6 bindings (issue 16): the same in either backend. One row per address; a client's
/// IA is (duid, iaid).
const LEASES6: &str = "CREATE TABLE netboot_leases6 (ip text PRIMARY KEY, duid text NOT NULL, iaid bigint NOT NULL, mac text,
        state text NOT NULL, expires bigint NOT NULL);
     CREATE INDEX netboot_leases6_client ON netboot_leases6 (duid, iaid);";

/// SQLite (`PRAGMA user_version`). Version 1 is the schema every earlier release created
/// (`IF NOT EXISTS`: an existing file takes it as it is).
pub const SQLITE: &[Migration] = &[
    Migration {
    version: 1,
    what: "leases by address, indexed by client and MAC",
    sql: "CREATE TABLE IF NOT EXISTS leases (
            ip       TEXT PRIMARY KEY,
            client   TEXT NOT NULL,
            mac      TEXT NOT NULL,
            hostname TEXT,
            state    TEXT NOT NULL,
            expires  INTEGER NOT NULL
          );
          CREATE INDEX IF NOT EXISTS leases_client ON leases(client);
          CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);",
    },
    Migration {
        version: 2,
        what: "provisioning: hosts of the API, node intents, node events, the audit log",
        sql: provisioning_tables!("INTEGER PRIMARY KEY AUTOINCREMENT", "integer"),
    },
    Migration { version: 3, what: "discovery: machines seen asking", sql: DISCOVERED },
    Migration { version: 4, what: "DHCPv6 bindings", sql: LEASES6 },
];

/// PostgreSQL (table `netboot_schema`). Times that clients see (`expires`) are Unix seconds
/// as in SQLite; times between servers (heartbeats) are the database's clock, so that no two
/// servers' clocks are ever compared.
pub const POSTGRES: &[Migration] = &[
    Migration {
    version: 1,
    what: "leases, their change log, cluster members, the claim function",
    sql: r#"
CREATE TABLE netboot_leases (
    ip        inet PRIMARY KEY,
    client    text NOT NULL,
    mac       text NOT NULL,
    hostname  text,
    state     text NOT NULL,
    expires   bigint NOT NULL,
    server_id text NOT NULL,
    updated   timestamptz NOT NULL DEFAULT now()
);
-- At most one live lease per client: two servers cannot both give one machine an address.
CREATE UNIQUE INDEX netboot_leases_one_per_client ON netboot_leases (client) WHERE state IN ('offered', 'bound');
CREATE INDEX netboot_leases_mac ON netboot_leases (mac);

-- Every change of a lease, in commit order: what the other servers follow.
CREATE TABLE netboot_lease_changes (
    seq       bigserial PRIMARY KEY,
    ip        inet NOT NULL,
    server_id text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION netboot_lease_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO netboot_lease_changes (ip, server_id) VALUES (NEW.ip, NEW.server_id);
    -- One wake-up per transaction (identical notifications are folded).
    PERFORM pg_notify('netboot_leases', '');
    RETURN NULL;
END $$;
CREATE TRIGGER netboot_lease_changed AFTER INSERT OR UPDATE ON netboot_leases
    FOR EACH ROW EXECUTE FUNCTION netboot_lease_changed();

CREATE TABLE netboot_members (
    server_id text PRIMARY KEY,
    started   timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);

-- Claims an address for a client, or says who has it: the one statement every lease write of
-- every server goes through. Returns won = true and the row written, or won = false and the
-- row that stands in the way: the address's live holder (another client), or this client's
-- live lease of another address that another server gave it (two servers owning one bucket
-- during a takeover). A lease of this client's from this server for another address is
-- superseded (the client moved). Renewals are the same claim: they win only while the row is
-- still this client's.
CREATE FUNCTION netboot_claim(p_ip inet, p_client text, p_mac text, p_hostname text, p_state text,
                              p_expires bigint, p_server text, p_now bigint)
RETURNS TABLE (won boolean, ip text, client text, mac text, hostname text, state text, expires bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE r netboot_leases%ROWTYPE;
BEGIN
    IF p_state IN ('offered', 'bound') THEN
        -- Claims of one client are serialised (two servers owning its bucket during a
        -- takeover): the check below then holds until this transaction ends, and the unique
        -- index on live leases per client is never violated (no subtransaction per claim).
        PERFORM pg_advisory_xact_lock(hashtext(p_client));
        SELECT * INTO r FROM netboot_leases l
         WHERE l.client = p_client AND l.ip <> p_ip AND l.state IN ('offered', 'bound')
           AND l.expires > p_now AND l.server_id <> p_server;
        IF FOUND THEN
            RETURN QUERY SELECT false, host(r.ip), r.client, r.mac, r.hostname, r.state, r.expires;
            RETURN;
        END IF;
        UPDATE netboot_leases l SET state = 'released', updated = now(), server_id = p_server
         WHERE l.client = p_client AND l.ip <> p_ip AND l.state IN ('offered', 'bound');
    END IF;
    INSERT INTO netboot_leases AS l (ip, client, mac, hostname, state, expires, server_id)
    VALUES (p_ip, p_client, p_mac, p_hostname, p_state, p_expires, p_server)
    ON CONFLICT (ip) DO UPDATE
       SET client = EXCLUDED.client, mac = EXCLUDED.mac, hostname = EXCLUDED.hostname,
           state = EXCLUDED.state, expires = EXCLUDED.expires, server_id = EXCLUDED.server_id,
           updated = now()
     WHERE l.client = EXCLUDED.client OR l.expires <= p_now OR l.state = 'released'
    RETURNING * INTO r;
    IF FOUND THEN
        RETURN QUERY SELECT true, host(r.ip), r.client, r.mac, r.hostname, r.state, r.expires;
        RETURN;
    END IF;
    SELECT * INTO r FROM netboot_leases l WHERE l.ip = p_ip;
    RETURN QUERY SELECT false, host(r.ip), r.client, r.mac, r.hostname, r.state, r.expires;
END $$;
"#,
    },
    Migration {
        version: 2,
        what: "members' presence sessions (a crashed member is seen at once)",
        sql: "ALTER TABLE netboot_members ADD COLUMN presence_pid integer, ADD COLUMN presence_at timestamptz;",
    },
    Migration {
        version: 3,
        what: "provisioning: hosts of the API, node intents, node events, the audit log",
        sql: provisioning_tables!("bigserial PRIMARY KEY", "boolean"),
    },
    Migration { version: 4, what: "discovery: machines seen asking", sql: DISCOVERED },
    Migration { version: 5, what: "DHCPv6 bindings", sql: LEASES6 },
];
