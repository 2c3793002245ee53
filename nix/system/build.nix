# Turns a merged mkSystem configuration into the toplevel (docs/layout.md) and its parts.
{ pkgs, pkgsMusl, cfg }:
let
  concatLines = builtins.concatStringsSep "\n";
  concatMapLines = f: l: concatLines (map f l);
  mapAttrsToList = f: s: map (n: f n s.${n}) (builtins.attrNames s);
  optional = c: x: if c then [ x ] else [ ];
  getBin = p: if p ? bin then p.bin else p;

  checkName = what: s:
    if builtins.match "[A-Za-z0-9._+~-]+" s != null then s
    else throw "mkSystem: ${what} '${s}' may only contain A-Z a-z 0-9 . _ + ~ -";
  version = checkName "system.version" cfg.system.version;
  # Written into abupdate.toml as TOML strings: no quote, backslash or newline may get through.
  checkChannel = s:
    if builtins.match "[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+" s != null then s
    else throw "mkSystem: abupdate.channel '${s}' is not a plain URL or path";
  # abupdate refuses to load a config it cannot parse, boot-check and mark-good included: a bad
  # value must fail the build, not the boot.
  checkJitter = s:
    if builtins.match "[0-9]+[smhd]?" s != null then s
    else throw "mkSystem: abupdate.updateJitter '${s}' must be seconds or a number with s, m, h or d (30m)";
  medium = cfg.abupdate.channelMedium;
  checkMedium = what: s:
    if builtins.match "[A-Za-z0-9._=/:-]+" s != null then s
    else throw "mkSystem: abupdate.channelMedium.${what} '${s}' is not a plain device, path or type";
  mediumDevice = checkMedium "device" (medium.device or (throw "mkSystem: abupdate.channelMedium needs a device (LABEL=..., UUID=... or /dev/...)"));
  mediumMountPoint = checkMedium "mountPoint" (medium.mountPoint or "/run/media/abupdates");
  mediumType = checkMedium "fsType" (medium.fsType or "auto");
  checkReboot = s:
    if builtins.match "never|immediately|([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]" s != null
      && (builtins.stringLength s != 11 || builtins.substring 0 5 s != builtins.substring 6 5 s)
    then s
    else throw "mkSystem: abupdate.reboot '${s}' must be never, immediately or HH:MM-HH:MM";
  name = checkName "system.name" cfg.system.name;
  compatible =
    if cfg.abupdate.compatible == null
    then throw "mkSystem: set abupdate.compatible (the image definition's compatible string)"
    else checkName "abupdate.compatible" cfg.abupdate.compatible;

  kernel = cfg.kernel.package;
  # The image file's name in the kernel's out: nixpkgs' kernels carry it as passthru.target
  # (build.nix: bzImage on x86); for other kernels the platform's, and x86_64's bzImage where
  # the platform no longer says (nixpkgs master dropped hostPlatform.linux-kernel in 2026).
  kernelTarget = kernel.target or (pkgs.stdenv.hostPlatform.linux-kernel.target or "bzImage");
  # The directory name under lib/modules: nixpkgs' kernels have modDirVersion (the version padded
  # to X.Y.Z, plus any suffix); a custom kernel may have only version.
  kver = kernel.modDirVersion or kernel.version;
  # Where the modules are: nixpkgs' kernels (since PR #423933, 2025) install them into their
  # `modules` output (lib.getOutput "modules" kernel); older and custom single-output kernels
  # have lib/modules in out. Chosen by the outputs, not by an attribute that happens to exist.
  kernelModules = if builtins.elem "modules" (kernel.outputs or [ ]) then kernel.modules else kernel;

  # One link per applet, all in bin/, whatever layout the busybox package has.
  bb = pkgs.runCommand "busybox-applets" { } ''
    mkdir -p $out/bin
    for a in $(${pkgsMusl.busybox}/bin/busybox --list); do
      ln -s ${pkgsMusl.busybox}/bin/busybox $out/bin/$a
    done
  '';
  abupdate = cfg.abupdate.package;
  sh = "${bb}/bin/sh";

  # --- the hardware watchdog: armed by abinit, fed by a service of init -----------------------
  wd = cfg.watchdog;
  wdTimeout =
    if builtins.isInt wd.timeout && wd.timeout >= 5 && wd.timeout <= 3600 then wd.timeout
    else throw "mkSystem: watchdog.timeout must be a whole number of seconds from 5 to 3600";
  watchdogModules = if wd.enable then wd.modules else [ ];
  kernelParams = cfg.kernel.params ++ optional wd.enable "abinit.hwwatchdog=${toString wdTimeout}";
  watchdogFeeder = pkgs.writeScript "watchdog-feeder" ''
    #!${sh}
    PATH=${path}
    export PATH
    ${builtins.readFile ./watchdog-feeder.sh}
  '';

  # --- initrd: the same init script and builder as the fixture --------------------------------
  e2fs = cfg.initrd.e2fsprogs;
  verity = cfg.verity;
  verityBins = if verity.enable
    then [ "${getBin verity.package}/bin/veritysetup" "${getBin abupdate}/bin/abupdate" ] else [ ];
  initrd = pkgs.runCommand "abinit-initrd-${kver}"
    {
      nativeBuildInputs = [ pkgs.zstd ]; # for kernels with .ko.zst modules
      busybox = "${getBin cfg.initrd.busybox}/bin/busybox";
      initScript = ../initrd/init.sh;
      moduleDir = "${kernelModules}/lib/modules/${kver}";
      kernelVersion = kver;
      modules = builtins.concatStringsSep " " (cfg.initrd.modules ++ cfg.kernel.modules
        ++ (if verity.enable then verity.modules else [ ]));
      optionalModules = builtins.concatStringsSep " " (cfg.initrd.optionalModules ++ watchdogModules);
      extraBins = builtins.concatStringsSep " " ((if e2fs == null then [ ]
        else map (p: "${getBin e2fs}/bin/${p}") [ "mkfs.ext4" "e2fsck" "resize2fs" ]) ++ verityBins);
      SOURCE_DATE_EPOCH = "1";
    } "sh ${../initrd/mkinitrd.sh}";

  # --- the system's programs -------------------------------------------------------------------
  sw = pkgs.buildEnv {
    name = "${name}-sw";
    paths = [ bb abupdate ] ++ optional cfg.ssh.enable cfg.ssh.package ++ cfg.packages;
    pathsToLink = [ "/bin" "/sbin" ];
  };
  path = "${sw}/bin:${sw}/sbin";

  # --- users -----------------------------------------------------------------------------------
  users = mapAttrsToList
    (n: u: {
      name = checkName "user name" n;
      uid = u.uid or (throw "mkSystem: users.${n}.uid is required");
      home = u.home or "/data/home/${n}";
      shell = if (u.shell or null) == null then sh else u.shell;
      authorizedKeys = u.authorizedKeys or [ ];
      hashedPassword = u.hashedPassword or null;
    })
    cfg.users;
  passwd = concatMapLines (u: "${u.name}:x:${toString u.uid}:${toString u.uid}:${u.name}:${u.home}:${u.shell}") users;
  group = concatMapLines (u: "${u.name}:x:${toString u.uid}:") users;
  # "*": no password can match, but the account is not locked (dropbear refuses locked ones).
  shadow = concatMapLines (u: "${u.name}:${if u.hashedPassword == null then "*" else u.hashedPassword}:1::::::") users;
  setupUsers = concatMapLines
    (u: ''
      mkdir -p '${u.home}/.ssh'
      chown ${toString u.uid}:${toString u.uid} '${u.home}' '${u.home}/.ssh'
      chmod 700 '${u.home}/.ssh'
      cp ${pkgs.writeText "authorized_keys-${u.name}" (concatLines u.authorizedKeys + "\n")} '${u.home}/.ssh/authorized_keys'
      chown ${toString u.uid}:${toString u.uid} '${u.home}/.ssh/authorized_keys'
      chmod 600 '${u.home}/.ssh/authorized_keys'
    '')
    users;

  # --- networking ------------------------------------------------------------------------------
  udhcpcScript = pkgs.writeScript "udhcpc-script" ''
    #!${sh}
    # busybox udhcpc hook: $1 is the event, the lease is in the environment.
    PATH=${path}
    case "$1" in
      deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
      bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/''${mask:-24}" dev "$interface"
        for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
        # The configured nameservers first, then the leases' (this one's and DHCPv6's).
        mkdir -p /run/dns
        : > "/run/dns/v4-$interface"
        for d in $dns; do echo "nameserver $d" >> "/run/dns/v4-$interface"; done
        ${writeResolvConf}
        ;;
    esac
    exit 0
  '';
  staticNet = concatLines (mapAttrsToList interfaceNet cfg.networking.interfaces);

  # --- static addresses (IPv4 and IPv6), gateways, SLAAC, DHCPv6 --------------------------------
  interfaceKeys = [ "address" "gateway" "addresses" "gateways" "slaac" ];
  # Written into shell commands: only what an address, a prefix length or a host name needs.
  checkAddr = what: s:
    if builtins.match "[0-9A-Fa-f.:]+(/[0-9]+)?" s != null then s
    else throw "mkSystem: ${what} '${s}' is not an IPv4 or IPv6 address";
  checkIf = s:
    if builtins.match "[A-Za-z0-9._-]+" s != null && builtins.stringLength s <= 15 then s
    else throw "mkSystem: '${s}' is not an interface name";
  isV6 = s: builtins.match ".*:.*" s != null;
  interfaceNet = name: i:
    let
      n = checkIf name;
      unknown = builtins.filter (k: !(builtins.elem k interfaceKeys)) (builtins.attrNames i);
      addresses = map (checkAddr "networking.interfaces.${n} address")
        (optional ((i.address or null) != null) i.address ++ (i.addresses or [ ]));
      gateways = map (checkAddr "networking.interfaces.${n} gateway")
        (optional ((i.gateway or null) != null) i.gateway ++ (i.gateways or [ ]));
    in
    if unknown != [ ] then throw "mkSystem: unknown option networking.interfaces.${n}.${builtins.head unknown}"
    else ''
      ${if i.slaac or true then "" else ''
        # slaac = false: no addresses or routes from router advertisements on ${n}.
        echo 0 > /proc/sys/net/ipv6/conf/${n}/accept_ra
        echo 0 > /proc/sys/net/ipv6/conf/${n}/autoconf
      ''}
      ip link set '${n}' up
      ${concatMapLines (a: "ip addr add '${a}' dev '${n}' || log 'cannot set ${a} on ${n}'") addresses}
      ${concatMapLines (g:
        # A link-local gateway (fe80::1) is only meaningful with its interface: dev says it.
        "ip ${if isV6 g then "-6" else "-4"} route replace default via '${g}' dev '${n}' || log 'no route via ${g}'")
        gateways}
    '';

  # /run/resolv.conf: the configured nameservers, then what the DHCP and DHCPv6 leases gave
  # (/run/dns/<family>-<interface>, written by their scripts).
  writeResolvConf = ''
    {
      ${concatMapLines (n: "echo 'nameserver ${checkAddr "networking.nameservers" n}'") cfg.networking.nameservers}
      cat /run/dns/* 2>/dev/null
    } > /run/resolv.conf.new
    mv /run/resolv.conf.new /run/resolv.conf
  '';

  # busybox udhcpc6 hook (stateful DHCPv6): the leased address as a /128 (DHCPv6 gives no
  # prefix and no route: the route comes from router advertisements or a gateway in
  # networking.interfaces), and the lease's DNS servers.
  udhcpc6Script = pkgs.writeScript "udhcpc6-script" ''
    #!${sh}
    PATH=${path}
    case "$1" in
      deconfig)
        ip link set "$interface" up
        ;;
      bound|renew)
        old=$(cat "/run/dhcp6-$interface" 2>/dev/null)
        if [ -n "$ipv6" ] && [ "$old" != "$ipv6" ]; then
          [ -z "$old" ] || ip -6 addr del "$old/128" dev "$interface"
          ip -6 addr add "$ipv6/128" dev "$interface" && echo "$ipv6" > "/run/dhcp6-$interface"
        fi
        mkdir -p /run/dns
        : > "/run/dns/v6-$interface"
        for d in $dns; do echo "nameserver $d" >> "/run/dns/v6-$interface"; done
        ${writeResolvConf}
        ;;
    esac
    exit 0
  '';

  # --- time: busybox ntpd ----------------------------------------------------------------------
  timeServers = map
    (s: if builtins.match "[A-Za-z0-9.:_-]+" s != null then s
        else throw "mkSystem: time.servers '${s}' is not a host name or address")
    cfg.time.servers;
  # ntpd's -S hook: /run/time-synced exists while ntpd has a synchronised clock (its first
  # answer gives "step" or "stratum"; "unsync" when it loses its servers).
  timeHook = pkgs.writeScript "ntpd-event" ''
    #!${sh}
    case "$1" in
      step|stratum|periodic) : > /run/time-synced ;;
      unsync) rm -f /run/time-synced ;;
    esac
  '';
  timeWait = if timeServers == [ ] then "" else ''
    # The first check waits for ntpd's first answer (at most ${toString cfg.time.waitSeconds} s): a
    # wrong clock would refuse a good channel as expired, or take an expired one, and fail TLS.
    waited=0
    while [ ! -e /run/time-synced ] && [ "$waited" -lt ${toString cfg.time.waitSeconds} ]; do
      sleep 2
      waited=$((waited + 2))
    done
    [ -e /run/time-synced ] || logger -t abupdate-update "no time from ${builtins.concatStringsSep " " timeServers} after $waited s; checking anyway" 2>/dev/null
  '';

  # --- services (busybox init respawns them) ---------------------------------------------------
  services =
    builtins.listToAttrs (map
      (i: {
        name = "udhcpc-${i}";
        value.command = "${bb}/bin/udhcpc -f -S -i ${i} -s ${udhcpcScript}";
      })
      cfg.networking.dhcp)
    // builtins.listToAttrs (map
      (i: {
        name = "udhcpc6-${checkIf i}";
        value.command = "${bb}/bin/udhcpc6 -f -i ${i} -s ${udhcpc6Script}";
      })
      cfg.networking.dhcp6)
    // (if timeServers == [ ] then { } else {
      ntpd.command = "${bb}/bin/ntpd -n -S ${timeHook}${builtins.concatStringsSep "" (map (s: " -p ${s}") timeServers)}";
    })
    // (if cfg.ssh.enable then {
      sshd.command = "${cfg.ssh.package}/bin/dropbear -F -E -s -p ${toString cfg.ssh.port} -r /var/lib/dropbear/dropbear_ed25519_host_key";
    } else { })
    // {
      syslogd.command =
        if cfg.logging.persistent
        then "${bb}/bin/syslogd -n -O /var/log/messages -s ${toString cfg.logging.rotateKiB} -b ${toString cfg.logging.keep}"
        else "${bb}/bin/syslogd -n -C${toString cfg.logging.rotateKiB}";
      klogd.command = "${bb}/bin/klogd -n";
    }
    // (if wd.enable then {
      watchdog-feeder.command = "${watchdogFeeder}";
    } else { })
    // (if cfg.abupdate.channel != null then {
      abupdate-update.command = "${updateLoop}";
    } else { })
    // cfg.services;

  # The periodic `abupdate update`: a loop respawned by busybox init (no cron, no timers). The
  # random delay before each check is abupdate's own (update-jitter); the outcome goes to syslog.
  # With a channel medium, it is mounted read-only for the check only: it may be swapped between
  # checks (the root is read-only, so the mount point must be under /run, /tmp or /data).
  updateLoop = pkgs.writeScript "abupdate-update-loop" ''
    #!${sh}
    PATH=${path}
    export PATH
    ${timeWait}
    while :; do
      ${if medium == null then "" else ''
        mkdir -p '${mediumMountPoint}'
        grep -q ' ${mediumMountPoint} ' /proc/mounts ||
          mount -t ${mediumType} -o ro,nosuid,nodev,noexec '${mediumDevice}' '${mediumMountPoint}' 2>/dev/null
      ''}
      out=$(abupdate update 2>&1)
      rc=$?
      ${if medium == null then "" else "umount '${mediumMountPoint}' 2>/dev/null"}
      logger -t abupdate-update "exit $rc: $out" 2>/dev/null
      sleep ${toString cfg.abupdate.updateInterval}
    done
  '';

  # busybox init runs a command with special characters through /bin/sh, which the root does not
  # have: every service is a script of its own.
  serviceScript = n: s: pkgs.writeScript "service-${n}" ''
    #!${sh}
    PATH=${path}
    export PATH
    exec ${s.command}
  '';

  inittab = pkgs.writeText "inittab" ''
    ::sysinit:${boot}
    ${concatLines (mapAttrsToList (n: s: "::respawn:${serviceScript n s}") services)}
    ::once:${healthAndMarkGood}
    ${concatMapLines (t: "${t}::respawn:${bb}/bin/getty -l ${bb}/bin/login -L 115200 ${t} vt100") cfg.consoles}
    ::ctrlaltdel:${bb}/bin/reboot
    ::shutdown:${shutdown}
  '';

  # --- boot, health, shutdown ------------------------------------------------------------------
  boot = pkgs.writeScript "${name}-boot" ''
    #!${sh}
    # busybox init's sysinit: runs once, before the services.
    PATH=${path}
    export PATH
    log() { echo "boot: $*"; }
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o gid=5,mode=0620 devpts /dev/pts
    mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
    hostname -F /etc/hostname
    ip link set lo up
    slot=$(sed -n 's/^AB_SLOT=//p' /run/abinit/env)
    log "${name} ${version} on slot $slot"
    abupdate boot-check
    log "abupdate boot-check exited with $?"
    mkdir -p /var/log /var/lib/dropbear /var/empty
    ${concatMapLines (n: "echo 'nameserver ${n}' >> /run/resolv.conf") cfg.networking.nameservers}
    ${staticNet}
    ${setupUsers}
    ${if cfg.ssh.enable then ''
      if [ ! -s /var/lib/dropbear/dropbear_ed25519_host_key ]; then
        log "creating the ssh host key"
        dropbearkey -t ed25519 -f /var/lib/dropbear/dropbear_ed25519_host_key >/dev/null
      fi
    '' else ""}
  '';

  healthCheck = pkgs.writeScript "health-check" ''
    #!${sh}
    PATH=${path}
    ${cfg.abupdate.healthCheck}
  '';

  healthAndMarkGood = pkgs.writeScript "${name}-health" ''
    #!${sh}
    # busybox init's "once" entry: after the services started. Marks the slot good when the
    # health check passes; reboots when it does not within the timeout, so that the boot counter
    # brings the previous slot back after the last try.
    PATH=${path}
    export PATH
    log() { echo "health: $*"; logger -t health "$*" 2>/dev/null; }
    waited=0
    until /etc/abupdate/health-check; do
      if [ "$waited" -ge ${toString cfg.abupdate.healthTimeout} ]; then
        log "unhealthy after $waited s: not marking this slot good; rebooting"
        reboot
        exit 1
      fi
      sleep 5
      waited=$((waited + 5))
    done
    abupdate mark-good
    log "healthy; abupdate mark-good exited with $?"
  '';

  shutdown = pkgs.writeScript "${name}-shutdown" ''
    #!${sh}
    PATH=${path}
    sync
    umount /var 2>/dev/null
    umount /data 2>/dev/null || mount -o remount,ro /data
    sync
  '';

  init = pkgs.writeScript "${name}-init" ''
    #!${sh}
    # PID 1 after the initrd's switch_root: busybox init with /etc/inittab.
    PATH=${path}
    export PATH
    exec ${bb}/bin/init
  '';

  # --- etc -------------------------------------------------------------------------------------
  etcFiles = {
    "hostname" = cfg.hostname + "\n";
    "hosts" = "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 ${cfg.hostname}\n";
    "os-release" = ''
      NAME="${name}"
      ID=${name}
      VERSION_ID=${version}
      PRETTY_NAME="${name} ${version}"
    '';
    "passwd" = passwd + "\n";
    "group" = group + "\n";
    "shadow" = shadow + "\n";
    "shells" = "${sh}\n";
    "profile" = ''
      export PATH=${path}
      export PS1='\u@\h:\w\$ '
    '';
    "inittab" = inittab;
    "abupdate.toml" = ''
      compatible = "${compatible}"
      keys = "/etc/abupdate/keys"
      boot-tries = ${toString cfg.abupdate.bootTries}
    '' + (if cfg.abupdate.channel == null then "" else ''
      channel = "${checkChannel cfg.abupdate.channel}"
      update-reboot = "${checkReboot cfg.abupdate.reboot}"
      update-jitter = "${checkJitter cfg.abupdate.updateJitter}"
    '');
    "abupdate/health-check" = healthCheck;
  } // builtins.listToAttrs (map (k: { name = "abupdate/keys/${baseNameOf k}"; value = k; }) cfg.abupdate.keys)
  // cfg.etc;

  etc = pkgs.runCommand "${name}-etc" { } ''
    mkdir -p $out
    ln -s /run/resolv.conf $out/resolv.conf
    ln -s /proc/mounts $out/mtab
    ${if cfg.ssh.enable && cfg.ssh.sftpServer != null then ''
      # dropbear's sftp server (options.nix): a link, so the file keeps its store references.
      mkdir -p $out/ssh
      ln -s ${cfg.ssh.sftpServer} $out/ssh/sftp-server
    '' else ""}
    ${concatLines (mapAttrsToList (p: v:
      # A string is the file's text; a path or a derivation is the file.
      let src = if builtins.isString v then pkgs.writeText "etc-${baseNameOf p}" v else v;
      in ''
        mkdir -p "$out/$(dirname '${p}')"
        cp -L ${src} "$out/${p}"
      '') etcFiles)}
  '';

  toplevel = pkgs.runCommand "abupdate-system-${name}-${version}" { } ''
    mkdir -p $out
    cp ${kernel}/${kernelTarget} $out/kernel
    cp ${initrd}/initrd $out/initrd
    echo '${builtins.concatStringsSep " " kernelParams}' > $out/kernel-params
    cp ${init} $out/init
    ln -s ${etc} $out/etc
    ln -s ${sw} $out/sw
  '';
in
{
  inherit toplevel initrd etc sw kernel;
  config = cfg;
}
