//! The whole system end to end: real servers, a real balancer and the real client, on ports
//! the OS picks, in temp folders.

mod support;

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use support::*;

/// One server behind the balancer, on its own test folder.
fn one_server_cluster(writable: bool) -> (TestDir, Proc, Proc) {
    let dir = TestDir::new(writable);
    let server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_balancer(&dir, 1, &[]);
    (dir, server, lb)
}

#[test]
fn the_original_query_scenario() {
    let (_dir, _server, lb) = one_server_cluster(false);
    let reply = Wire::connect(lb.addr).request("SELECT * FROM COLORS LIMIT 3;");
    assert!(reply.header.starts_with("OK "), "{reply:?}");
    assert_eq!(reply.server(), Some(1));
    assert_eq!(
        reply.text(),
        "Name: White\nHEX: #FFFFFF\nRGB: rgb(255,255,255)\n\n\
         Name: Silver\nHEX: #C0C0C0\nRGB: rgb(192,192,192)\n\n\
         Name: Gray\nHEX: #808080\nRGB: rgb(128,128,128)\n"
    );
    let length: usize = reply.header.split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(length, reply.body.len());
}

#[test]
fn zero_rows_and_bad_sql() {
    let (_dir, _server, lb) = one_server_cluster(false);
    let mut wire = Wire::connect(lb.addr);
    let reply = wire.request("SELECT * FROM COLORS WHERE Name = 'Nope'");
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(reply.text(), "No output");
    let reply = wire.request("SELEC nonsense");
    assert_eq!(reply.code(), Some("sql"), "{reply:?}");
    assert!(reply.header.contains("syntax error"), "{reply:?}");
    // The connection is still usable after an error.
    assert_eq!(wire.request("SELECT 1 AS one").text(), "one: 1\n");
}

#[test]
fn files_arrive_byte_identical_through_the_client() {
    let (dir, _server, lb) = one_server_cluster(false);
    let lb_addr = lb.addr.to_string();
    for name in ["colors.csv", "palette.png", "hello.txt"] {
        let (code, out, err) = run_client(
            &dir.path,
            &["4", "--lb", &lb_addr, "--download-dir", "downloads", "file", name],
            "",
        );
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("received successfully"), "{out}");
        assert!(out.contains("from server 1"), "{out}");
        assert!(out.contains("Time taken: "), "{out}");
        let got = fs::read(dir.downloads().join(name)).unwrap();
        assert!(got == TestDir::data_file(name), "{name} differs");
    }
    // Nothing but the three files: no temp files left over.
    assert_eq!(fs::read_dir(dir.downloads()).unwrap().count(), 3);
}

#[test]
fn a_missing_file_is_not_found_and_leaves_nothing() {
    let (dir, _server, lb) = one_server_cluster(false);
    let reply = Wire::connect(lb.addr).request("file nope.txt");
    assert_eq!(reply.header, "ERR not_found no such file: nope.txt");
    let (code, out, _) = run_client(
        &dir.path,
        &["4", "--lb", &lb.addr.to_string(), "--download-dir", "downloads", "file", "nope.txt"],
        "",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ERR not_found"), "{out}");
    assert_eq!(fs::read_dir(dir.downloads()).unwrap().count(), 0);
}

#[test]
fn twenty_requests_on_one_connection_come_back_in_order() {
    let (_dir, _server, lb) = one_server_cluster(false);
    let mut wire = Wire::connect(lb.addr);
    // Send all twenty before reading any reply: the replies must still come in order.
    let mut batch = String::new();
    for i in 0..20 {
        if i % 5 == 4 {
            batch.push_str("file hello.txt\n");
        } else {
            batch.push_str(&format!("SELECT {i} AS n\n"));
        }
    }
    wire.send_raw(batch.as_bytes());
    let hello = TestDir::data_file("hello.txt");
    for i in 0..20 {
        let reply = wire.read_reply();
        assert!(reply.is_ok(), "{i}: {reply:?}");
        if i % 5 == 4 {
            assert_eq!(reply.body, hello, "reply {i}");
        } else {
            assert_eq!(reply.text(), format!("n: {i}\n"), "reply {i}");
        }
    }
}

#[test]
fn a_write_through_one_server_is_read_through_another() {
    let dir = TestDir::new(true);
    let s1 = start_server(&dir, 1, 0.0, &[]);
    let s2 = start_server(&dir, 2, 0.0, &[]);
    let reply = Wire::connect(s1.addr)
        .request("INSERT INTO COLORS VALUES ('Minilb Blue', '#1234AB', 'rgb(18,52,171)')");
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(reply.server(), Some(1));
    assert!(reply.header.contains("changes=1"), "{reply:?}");
    let reply = Wire::connect(s2.addr).request("SELECT HEX FROM COLORS WHERE Name = 'Minilb Blue'");
    assert_eq!(reply.server(), Some(2));
    assert_eq!(reply.text(), "HEX: #1234AB\n");
}

#[test]
fn a_write_on_a_read_only_database_is_refused_and_changes_nothing() {
    let (_dir, _server, lb) = one_server_cluster(false);
    let mut wire = Wire::connect(lb.addr);
    let before = wire.request("SELECT count(*) AS n FROM COLORS").text();
    for sql in [
        "INSERT INTO COLORS VALUES ('X', '#000001', 'rgb(0,0,1)')",
        "DELETE FROM COLORS",
        "DROP TABLE COLORS",
        "UPDATE COLORS SET Name = 'Y'",
        "CREATE TABLE t (x)",
    ] {
        let reply = wire.request(sql);
        assert_eq!(reply.code(), Some("forbidden"), "{sql}: {reply:?}");
        assert!(reply.header.contains("read-only"), "{reply:?}");
    }
    assert_eq!(wire.request("SELECT count(*) AS n FROM COLORS").text(), before);
    assert!(
        before.starts_with("n: ") && before.trim()["n: ".len()..].parse::<u32>().unwrap() >= 100
    );
}

#[test]
fn thirty_concurrent_clients_over_three_unequal_servers() {
    let dir = TestDir::new(false);
    let _servers = [
        start_server(&dir, 1, 0.02, &[]),
        start_server(&dir, 2, 0.05, &[]),
        start_server(&dir, 3, 0.1, &[]),
    ];
    let lb = start_balancer(&dir, 3, &[]);
    let threads: Vec<_> = (0..30)
        .map(|i| {
            let addr = lb.addr;
            std::thread::spawn(move || {
                let reply = Wire::connect(addr).request(&format!("SELECT {i} AS client"));
                assert_eq!(reply.text(), format!("client: {i}\n"), "{reply:?}");
                reply.server().unwrap()
            })
        })
        .collect();
    let mut by_server: HashMap<u32, usize> = HashMap::new();
    for t in threads {
        *by_server.entry(t.join().unwrap()).or_default() += 1;
    }
    assert_eq!(by_server.values().sum::<usize>(), 30);
    let count = |id| by_server.get(&id).copied().unwrap_or(0);
    assert!(
        count(1) > count(2) && count(1) > count(3),
        "the fastest server should answer the most: {by_server:?}"
    );
}

#[test]
fn the_client_one_shot_and_interactive_modes() {
    let (dir, _server, lb) = one_server_cluster(false);
    let lb_addr = lb.addr.to_string();
    let (code, out, _) = run_client(
        &dir.path,
        &["2", "--lb", &lb_addr, "SELECT", "*", "FROM", "COLORS", "LIMIT", "1;"],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Sending request from client 2"), "{out}");
    assert!(out.contains("Name: White\nHEX: #FFFFFF\n"), "{out}");
    assert!(out.contains("Answered by server 1"), "{out}");
    assert!(out.contains("Time taken: "), "{out}");

    // A query pasted over several lines is one request, not two.
    let (code, out, _) =
        run_client(&dir.path, &["2", "--lb", &lb_addr, "SELECT 1 AS one,\n  2 AS two"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("one: 1\ntwo: 2\n"), "{out}");

    let (code, out, _) = run_client(&dir.path, &["2", "--lb", &lb_addr, "SELEC 1"], "");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ERR sql"), "{out}");

    let session =
        "SELECT Name FROM COLORS LIMIT 1\n\nfile hello.txt\nSELECT 2 AS two\nquit\nSELECT 3\n";
    let (code, out, _) =
        run_client(&dir.path, &["3", "--lb", &lb_addr, "--download-dir", "downloads"], session);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("Enter query: ").count(), 5, "{out}");
    assert!(out.contains("Name: White"), "{out}");
    assert!(out.contains("two: 2"), "{out}");
    assert!(!out.contains("3: 3"), "requests after quit must not run: {out}");
    assert_eq!(
        std::fs::read(dir.downloads().join("hello.txt")).unwrap(),
        TestDir::data_file("hello.txt")
    );

    // End of input ends the session too; the last reply decides the exit code.
    let (code, out, _) = run_client(&dir.path, &["3", "--lb", &lb_addr], "file nope\n");
    assert_eq!(code, 1, "{out}");

    // No balancer there: exit code 2 and a message that says what to do.
    let (code, _, err) = run_client(&dir.path, &["3", "--lb", "127.0.0.1:1", "SELECT 1"], "");
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach the load balancer"), "{err}");
}

#[test]
fn servers_record_themselves_and_leave_on_ctrl_c() {
    let dir = TestDir::new(false);
    let mut s1 = start_server(&dir, 1, 0.0, &[]);
    let s2 = start_server(&dir, 2, 0.0, &[]);
    let listed = |dir: &TestDir| -> Vec<u16> {
        let list: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.servers_file()).unwrap()).unwrap();
        list.as_array().unwrap().iter().map(|e| e["port"].as_u64().unwrap() as u16).collect()
    };
    assert_eq!(listed(&dir), vec![s1.addr.port(), s2.addr.port()]);
    assert_eq!(s1.interrupt(Duration::from_secs(30)), Some(0));
    assert_eq!(listed(&dir), vec![s2.addr.port()]);
}
