# On top of examples/vps.nix, for a boot of the mock-built system in QEMU: the mock's e2fsprogs
# and dropbear are stand-ins, so use busybox mke2fs and a health check that does not need sshd;
# announce readiness on the console like the fixture does.
{ ... }:
{
  system.version = "7";
  consoles = [ "ttyS0" ];
  initrd.e2fsprogs = null;
  kernel.params = [ "console=ttyS0" ];
  abupdate.healthCheck = ''
    echo "ABTEST HEALTH-CHECK running"
    exit 0
  '';
  services.ready.command = "sh -c 'echo ABTEST SERVICES-UP; exec sleep 2147483647'";
}
