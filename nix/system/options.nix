# The options of mkSystem and their defaults (docs/nix.md describes each). Modules override them.
{ config, pkgs, pkgsMusl, abupdate }:
{
  system = {
    # Names the toplevel store path: abupdate-system-<name>-<version>.
    name = "abupdate-system";
    # The system's own version string (etc/os-release VERSION_ID). The bundle's version is what
    # `abbuild build --version` is given; keep them equal.
    version = "0";
  };

  hostname = "abupdate";

  # A getty on each (busybox getty + login): only users with a hashedPassword can log in there.
  consoles = [ "ttyS0" ];

  kernel = {
    # A kernel is independent of the C library: the default is nixpkgs' ordinary kernel, from
    # the binary cache, rather than a rebuild under pkgsMusl. It has the EFI stub, and virtio,
    # squashfs, overlay and ext4 as modules or built in; the initrd copes with both.
    package = pkgs.linuxPackages.kernel;
    # The bootloader entry adds ab.slot= and root=, the image definition its own parameters.
    params = [ "panic=10" ];
    # Modules the running system needs (network, ...). The root has no /lib/modules and nothing
    # loads modules on demand: they are loaded by the initrd, before the switch.
    modules = [ "virtio_net" ];
  };

  initrd = {
    # What the initrd needs to find and mount the slot and the data partition on common VPS and
    # QEMU hardware (virtio, SCSI, NVMe, SATA). Names, built-in modules or aliases; dependencies
    # (modules.dep) and soft dependencies (modules.softdep) are added. The build fails, naming
    # the kernel version, when the kernel has one of these in none of those forms.
    modules = [
      "virtio_pci" "virtio_blk" "virtio_scsi" "sd_mod" "nvme" "ahci"
      "squashfs" "ext4" "overlay"
    ];
    # The same, but skipped (with a note at build time) when the kernel lacks them. "crc32c" is
    # the crypto API's alias: crc32c_generic (and crc32c-intel) before Linux 6.16,
    # crc32c-cryptoapi since (kernels whose ext4 asks for it name it in modules.softdep too).
    # efivarfs: systemd-boot's LoaderDevicePartUUID, which tells the initrd the disk it booted
    # from when another disk carries a copy of the image (built in on most kernels).
    optionalModules = [ "crc32c" "efivarfs" ];
    # Must be statically linked: the initrd has no dynamic loader.
    busybox = pkgsMusl.busybox.override { enableStatic = true; };
    # mkfs.ext4, e2fsck and resize2fs in the initrd (journaled ext4 on data, checked at every
    # boot, grown when its partition was grown).
    # null: busybox mke2fs, which makes ext2.
    # Without fuse2fs and libarchive (on by default in nixpkgs), which the initrd does not use and
    # pkgsStatic would otherwise build statically (fuse3, libarchive and what they need).
    e2fsprogs = pkgs.pkgsStatic.e2fsprogs.override { withFuse = false; withLibarchive = false; };
  };

  # The hardware watchdog (docs/nix.md). enable: the initrd loads `modules` (skipped when the
  # kernel has none of them) and, when a watchdog device exists then, arms it with `timeout`
  # seconds; init runs a feeder that keeps it fed while init itself still works. A boot that
  # wedges (init hung, user space stuck) is reset and counts as a failed try. No device: no-op.
  watchdog = {
    enable = true;
    timeout = 60;
    # QEMU's and Proxmox's i6300esb. Add your platform's (ib700wdt, iTCO_wdt, ...) if it has one.
    modules = [ "i6300esb" ];
  };

  # dm-verity (docs/updater.md, "A damaged slot"): the initrd opens a slot whose boot entry
  # carries abinit.verity= (abbuild puts it there unless the image definition says
  # verity = false) through dm-verity, reads it whole against the signed root hash before
  # mounting it, and on damage marks it bad with its own copy of abupdate. enable: the initrd
  # gets `modules` (required), veritysetup from `package` (static: the initrd has no dynamic
  # loader) and abupdate. false: none of these, and a slot booted with abinit.verity= stops
  # with "the initrd has no veritysetup": set verity = false in the image definition too.
  verity = {
    enable = true;
    modules = [ "dm_mod" "dm_verity" ];
    # cryptsetup's bin output has veritysetup; pkgsStatic builds it statically linked.
    package = pkgs.pkgsStatic.cryptsetup;
  };

  # Everything on the system's PATH besides busybox and abupdate.
  packages = [ ];

  networking = {
    # Interfaces configured by DHCP (busybox udhcpc, supervised by init).
    dhcp = [ "eth0" ];
    # Static configuration: interfaces.<name> = { address = "192.0.2.10/24"; gateway = "192.0.2.1"; }
    # or, dual stack: { addresses = [ "192.0.2.10/24" "2001:db8::10/64" ];
    #   gateways = [ "192.0.2.1" "fe80::1" ]; slaac = false; } (a link-local gateway is reached
    # through this interface; slaac = false ignores router advertisements there).
    interfaces = { };
    # Written to /run/resolv.conf (/etc/resolv.conf points there); DHCP replaces it.
    nameservers = [ ];
    # Interfaces configured by DHCPv6 (busybox udhcpc6, supervised by init): for providers that
    # hand out IPv6 addresses without router advertisements (SLAAC needs nothing here: the kernel
    # takes addresses from router advertisements on every interface whose slaac is not false).
    dhcp6 = [ ];
  };

  # The clock: busybox ntpd, supervised by init, steps the clock at its first answer and then
  # keeps it disciplined. The update loop waits (at most waitSeconds) for that first answer
  # before its first `abupdate update`, so that channel expiry and TLS certificates are judged
  # by a set clock. Air-gapped sites name their own servers; [ ]: no time service.
  time = {
    servers = [ "0.pool.ntp.org" "1.pool.ntp.org" "2.pool.ntp.org" ];
    waitSeconds = 120;
  };

  ssh = {
    # dropbear; host keys are made on first boot in /var/lib/dropbear (persistent).
    enable = true;
    port = 22;
    # nixpkgs' dropbear has no scp by default and runs sftp-server from a NixOS path: built here
    # with its scp, and with /etc/ssh/sftp-server (a link to sftpServer) as its sftp server.
    package = pkgsMusl.dropbear.override { enableSCP = true; sftpPath = "/etc/ssh/sftp-server"; };
    # What dropbear runs for the sftp subsystem (also what `scp` from OpenSSH >= 9.0 uses):
    # OpenSSH's sftp-server, copied alone so that the system holds it rather than all of openssh.
    # null: no sftp.
    # Built without PAM and ldns (on by default in nixpkgs' openssh): sftp-server uses neither,
    # and both would otherwise be built for musl just for this file.
    sftpServer = pkgs.runCommand "sftp-server" { } ''
      cp ${pkgsMusl.openssh.override { withPAM = false; withLdns = false; }}/libexec/sftp-server $out
    '';
  };

  # users.<name> = { uid; home; shell; authorizedKeys = [ "ssh-ed25519 ..." ]; hashedPassword; }
  # Homes are created on the data partition at boot; authorized keys are rewritten from this
  # configuration at every boot. Without hashedPassword (a crypt(3) hash) a user has no password:
  # ssh with a key only.
  users = {
    root = {
      uid = 0;
      home = "/data/root";
      shell = null; # busybox sh
      authorizedKeys = [ ];
    };
  };

  logging = {
    # busybox syslogd and klogd. persistent: /var/log/messages, rotated at rotateKiB with keep
    # old files (needs busybox's FEATURE_ROTATE_LOGFILE, on in nixpkgs' busybox). false: a
    # rotateKiB ring buffer in memory, read with logread.
    persistent = true;
    rotateKiB = 1024;
    keep = 2;
  };

  # services.<name> = { command = "..."; } : respawned by busybox init after the boot script.
  services = { };

  # etc.<path> = "text" (a string is always the file's text), or a path or derivation (the file).
  etc = { };

  abupdate = {
    package = abupdate;
    # etc/abupdate.toml's compatible string: must equal the image definition's.
    compatible = null;
    # Boots a newly installed slot gets before the fallback: must equal the image definition's
    # boot-tries (abbuild checks both this and compatible).
    bootTries = 3;
    # Trusted public keys (*.pub files from `abbuild keygen`), installed in /etc/abupdate/keys.
    keys = [ ];
    # Shell code that exits 0 when the system is healthy. It runs after the services are
    # started, retried every 5 s until it passes or healthTimeout seconds have gone by; then the
    # slot is marked good, or the machine reboots (the boot counter falls back after the tries).
    healthCheck = "exit 0";
    healthTimeout = 120;
    # Unattended updates (docs/channels.md). channel: the signed channel file's URL
    # (https://..., file:///... or a path on a mounted medium); null: no periodic check.
    channel = null;
    # Seconds between the end of one `abupdate update` and the start of the next.
    updateInterval = 3600;
    # Longest random delay before each check (update-jitter): spreads a fleet's requests.
    updateJitter = "30m";
    # update-reboot: "never", "immediately", or a daily window "HH:MM-HH:MM" (UTC).
    reboot = "never";
    # Air-gapped sites: the medium holding the published tree, mounted read-only by the update
    # loop for each check and unmounted after (so it may be plugged in, swapped or pulled
    # between checks): { device = "LABEL=abupdates"; mountPoint = "/run/media/abupdates";
    # fsType = "auto"; } with channel = "/run/media/abupdates/<image>/<channel>.json".
    # null: the channel needs no mount.
    channelMedium = null;
  };
}
