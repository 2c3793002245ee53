"""Bad bundles: a corrupted and a wrongly signed bundle are refused inside the guest with
their documented exit codes; after a reboot the same slot runs the same version."""

# Wall time in the CI run of 2026-11-28 (the runner starts the longest first).
EXPECTED_SECONDS = 32


def run(t):
    m = t.machine("1")
    m.start(media=[t.bundle("corrupt"), t.bundle("wrong-key")])
    assert m.wait_ready() == ("a", "1")
    before = m.run("sha256sum /dev/vda1 | cut -c1-64")[1].strip()

    status, out = m.run("abupdate apply /dev/vdc", check=False, timeout=300)
    assert status == 15, f"wrong key: exit {status}\n{out}"  # not signed by a trusted key
    status, out = m.run("abupdate apply /dev/vdb", check=False, timeout=900)
    assert status == 18, f"corrupt payload: exit {status}\n{out}"  # chunk mismatch

    st = m.status_json()
    assert st["runningSlot"] == "a" and st["nextBootSlot"] == "a", st
    after = m.run("sha256sum /dev/vda1 | cut -c1-64")[1].strip()
    # The refused bundles never reached the ESP (the corrupt one was stopped in the slot).
    assert before == after, "ESP changed by a refused bundle"
    m.reboot()
    assert m.wait_ready() == ("a", "1")
