# On top of examples/vps.nix, for a boot of the mock-built system in QEMU: the mock's e2fsprogs
# and dropbear are stand-ins, so use busybox mke2fs and a health check that does not need sshd;
# announce readiness on the console like the fixture does.
{ ... }:
{
  system.version = "7";
  consoles = [ "ttyS0" ];
  initrd.e2fsprogs = null;
  logging.persistent = false; # Debian's busybox (the mock's) has no log rotation
  time.servers = { __replace = [ ]; }; # nor ntpd (and no network beyond QEMU's)
  kernel.params = [ "console=ttyS0" ];
  abupdate.healthCheck = ''
    echo "ABTEST HEALTH-CHECK running"
    exit 0
  '';
  # Shows on the console what the boot set up, then stays up.
  services.ready.command = "sh -c 'sleep 15; echo ABTEST SERVICES-UP; cat /run/resolv.conf; ip -4 addr show dev eth0; ip route; ls -l /data/root/.ssh /var/lib/dropbear; ps; logread | tail -n 3; echo ABTEST INFO-END; exec sleep 2147483647'";
}
