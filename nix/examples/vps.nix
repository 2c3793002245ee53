# The example system for images/vps.toml (BIOS and UEFI, GRUB) and images/vps-uefi.toml (UEFI,
# systemd-boot), both compatible "vps-x86_64": a small VPS reachable over ssh, with DHCP on eth0.
# Build its toplevel, then the image and bundle:
#
#   nix build .#vps            (or: nix-build nix -A examples.vps.toplevel)
#   abbuild build --image images/vps.toml --system ./result --version 1 --key ci.key --out-dir out
#
# example.pub is a throwaway public key, only so that this evaluates: put your own
# (`abbuild keygen`) in its place, and your ssh key in authorizedKeys.
{ pkgs, pkgsMusl, ... }:
{
  system = { name = "vps"; version = "1"; };
  hostname = "vps";
  consoles = [ "ttyS0" "tty1" ];

  kernel.params = [ "panic=10" ];
  kernel.modules = [ "virtio_net" ];

  networking.dhcp = [ "eth0" ];
  networking.nameservers = [ "9.9.9.9" ];

  ssh.enable = true;
  users.root.authorizedKeys = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExampleEx admin@example"
  ];

  abupdate = {
    compatible = "vps-x86_64";
    keys = [ ./example.pub ];
    # Healthy when sshd listens.
    healthCheck = ''
      netstat -ltn | grep -q ':22 '
    '';
    healthTimeout = 120;
  };

  packages = [ pkgsMusl.curl ];
}
