"""Data survives: a file written to the data partition before an update is still there after
the update and after a fallback from a broken update."""


def run(t):
    m = t.machine("1")
    m.start(media=[t.bundle("qemu-test-2"), t.bundle("broken")])
    assert m.wait_ready() == ("a", "1")
    m.run("echo precious > /data/keep-me && sync")
    m.run("abupdate apply /dev/vdb", timeout=900)
    m.reboot()
    assert m.wait_ready() == ("b", "2")
    assert m.run("cat /data/keep-me")[1].strip() == "precious"

    m.run("abupdate apply /dev/vdc", timeout=900)
    m.reboot()
    # Broken system in slot a: three failed tries, then back to v2 in slot b.
    assert m.wait_ready(timeout=900) == ("b", "2")
    assert m.run("cat /data/keep-me")[1].strip() == "precious"
