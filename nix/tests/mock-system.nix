# mkSystem evaluated and built against mock-nixpkgs.nix (no nixpkgs needed):
#   nix-instantiate nix/tests/mock-system.nix -A vps.toplevel --argstr abupdate "$PWD/<static abupdate>"
#   nix-build --option sandbox false nix/tests/mock-system.nix -A bootable.toplevel --argstr abupdate ...
# "bootable" is the example VPS system adjusted to what the mock can really run (see vps-test.nix).
# The Nix-built abbuild, wrapped with the mock systemd's EFI binary and the mock GRUB (see
# mock-nixpkgs):
#   nix-build --option sandbox false nix/tests/mock-system.nix -A abbuild --argstr abbuild "$PWD/<abbuild>"
{ abupdate ? null, abbuild ? null, abdocgen ? null, systemdBootEfi ? null, grubLib ? null
, kernelVersion ? null }:
let
  pkgs = import ./mock-nixpkgs { inherit abupdate abbuild abdocgen systemdBootEfi grubLib kernelVersion; };
  ab = import ../default.nix { inherit pkgs; };
in
{
  inherit (ab) abbuild;
  vps = ab.examples.vps;
  bootable = ab.mkSystem { modules = [ ../examples/vps.nix ./vps-test.nix ]; };
  # The 128 MiB web server example (busybox httpd, health-checked by a request to itself).
  webserver = ab.examples.webserver;
  # Booted by nix/tests/boot-test.sh webserver with an i6300esb: the web server answers its own
  # health check (without the example's sshd part: the mock's dropbear does not listen), and the
  # watchdog (10 s) is armed by the initrd and fed by mkSystem's init past its timeout.
  bootableWebserver = ab.mkSystem {
    modules = [
      ../examples/vps.nix
      ./vps-test.nix
      ../examples/webserver.nix
      {
        abupdate.healthCheck = "wget -q -O /dev/null http://127.0.0.1/ && echo ABTEST WEB-HEALTHY";
        watchdog.timeout = 10;
      }
    ];
  };
  # An older nixpkgs' or a custom kernel: one output, lib/modules/<modDirVersion> inside it, no
  # passthru target (so the platform's or x86_64's default). "bootable" has the mock's kernel,
  # laid out as current nixpkgs' (a modules output).
  singleOutputKernel = ab.mkSystem {
    modules = [
      ../examples/vps.nix
      ./vps-test.nix
      {
        kernel.package = pkgs.runCommand "linux-single-output" { } ''
          mkdir -p $out/lib/modules
          cp ${pkgs.linuxPackages.kernel}/bzImage $out/bzImage
          cp -r ${pkgs.linuxPackages.kernel.modules}/lib/modules/. $out/lib/modules/
        '' // { inherit (pkgs.linuxPackages.kernel) modDirVersion version; };
      }
    ];
  };
  # With a channel: the periodic `abupdate update` (docs/channels.md).
  updating = ab.mkSystem {
    modules = [
      ../examples/vps.nix
      ./vps-test.nix
      {
        abupdate = {
          channel = "https://updates.example.org/vps/stable.json";
          reboot = "03:00-05:00";
          updateInterval = 600;
          updateJitter = "5m";
        };
      }
    ];
  };
  # IPv6 as providers hand it out: static v4 and v6 addresses with a link-local v6 gateway on
  # eth0 (no router advertisements taken there), DHCP and DHCPv6 on eth1, and a time server of
  # the site's own before the periodic update.
  dualStack = ab.mkSystem {
    modules = [
      ../examples/vps.nix
      ./vps-test.nix
      {
        networking = {
          dhcp = { __replace = [ "eth1" ]; };
          dhcp6 = [ "eth1" ];
          nameservers = [ "2001:db8::53" ];
          interfaces.eth0 = {
            address = "192.0.2.10/24";
            addresses = [ "2001:db8:1:2::10/64" "2001:db8:1:2::11/64" ];
            gateways = [ "192.0.2.1" "fe80::1" ];
            slaac = false;
          };
        };
        time.servers = { __replace = [ "ntp.example.internal" "2001:db8::123" ]; };
        abupdate.channel = "https://updates.example.org/vps/stable.json";
      }
    ];
  };
  # Air-gapped: the channel on a medium the update loop mounts for each check.
  updatingOffline = ab.mkSystem {
    modules = [
      ../examples/vps.nix
      ./vps-test.nix
      {
        abupdate = {
          channel = "/run/media/abupdates/vps/stable.json";
          channelMedium = { device = "LABEL=abupdates"; mountPoint = "/run/media/abupdates"; };
          reboot = "immediately";
        };
      }
    ];
  };
}
