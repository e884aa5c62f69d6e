//! The harness's own servers come up on loopback, work for real, and go away on drop.

use keyturn_tests::moto::Moto;
use keyturn_tests::postgres::{Postgres, SUPERUSER};
use serde_json::json;

#[tokio::test]
async fn postgres_accepts_the_superuser_password_and_refuses_a_wrong_one() {
    let pg = Postgres::start_with(&[("log_statement", "all")])
        .await
        .unwrap();
    let admin = pg.admin().await.unwrap();
    let row = admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap();
    let version: i32 = row.get(0);
    assert!(
        (150_000..160_000).contains(&version),
        "expected PostgreSQL 15, got {version}"
    );
    admin
        .batch_execute("CREATE ROLE harness_probe LOGIN PASSWORD 'probe-pw'")
        .await
        .unwrap();
    pg.connect_as("harness_probe", "probe-pw").await.unwrap();
    let Err(e) = pg.connect_as(SUPERUSER, "wrong").await else {
        panic!("a wrong password must fail")
    };
    let code = e.as_db_error().map(|d| d.code().clone());
    assert_eq!(
        code,
        Some(tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{e:?}"
    );
    // log_statement=all reached the server: the statement above is in its log.
    assert!(
        pg.log().contains("CREATE ROLE harness_probe"),
        "server log lacks the statement"
    );
}

#[tokio::test]
async fn two_postgres_clusters_run_side_by_side_on_their_own_ports() {
    let (a, b) = tokio::join!(Postgres::start(), Postgres::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    a.admin()
        .await
        .unwrap()
        .batch_execute("CREATE ROLE only_in_a")
        .await
        .unwrap();
    let n: i64 = b
        .admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'only_in_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_dropped_postgres_stops_listening() {
    let pg = Postgres::start().await.unwrap();
    let port = pg.port();
    drop(pg);
    assert!(!keyturn_tests::process::port_open(port).await);
}

/// The tests that need a refused connection hold a `ClosedPort`: a port found free a moment
/// before could be taken by another test's server, and the run meant to be refused then
/// reached it (a hostile manifest exited 77 from that server's 403, not 69).
#[tokio::test]
async fn a_closed_port_refuses_connections_and_cannot_be_taken_while_held() {
    let closed = keyturn_tests::process::ClosedPort::new();
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", closed.port()))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // Servers bind with SO_REUSEADDR, as std's listener does: still refused.
    let taken = std::net::TcpListener::bind(("127.0.0.1", closed.port())).unwrap_err();
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    let port = closed.port();
    drop(closed);
    drop(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
}

#[tokio::test]
async fn moto_stores_and_returns_a_secrets_manager_secret() {
    let moto = Moto::start().await.unwrap();
    let created = moto
        .secretsmanager(
            "CreateSecret",
            json!({"Name": "harness/probe", "SecretString": "v1"}),
        )
        .await
        .unwrap();
    assert!(created["ARN"].as_str().unwrap().contains("harness/probe"));
    let got = moto
        .secretsmanager("GetSecretValue", json!({"SecretId": "harness/probe"}))
        .await
        .unwrap();
    assert_eq!(got["SecretString"], "v1");
    assert_eq!(got["VersionStages"], json!(["AWSCURRENT"]));
    let missing = moto
        .secretsmanager("GetSecretValue", json!({"SecretId": "nope"}))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("ResourceNotFoundException"),
        "{missing}"
    );
}

/// The README's first command runs `keyturn-demo`: it must succeed end to end, and its last
/// claim (an edited copy of the audit log is caught) must be shown, not just printed. An edit
/// of a `started` intent once left the copy intact and the demo said "ok" without failing.
#[tokio::test]
async fn the_demo_runs_end_to_end_and_catches_the_edited_audit_log() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyturn-demo"))
        .env("KEYTURN_BIN", keyturn_tests::bins::keyturn())
        .env("KEYTURN_INIT_BIN", keyturn_tests::bins::keyturn_init())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    let (_, tamper) = stdout
        .split_once("an attacker edits one event's outcome")
        .expect("the tamper step ran");
    assert!(tamper.contains("broken: seq"), "{tamper}");
    assert!(tamper.contains("exit 1"), "{tamper}");
}
