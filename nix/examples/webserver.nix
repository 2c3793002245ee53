# The 128 MiB web server (docs/nix.md, "A web server in 128 MiB"): on top of vps.nix,
#
#   mkSystem { modules = [ ./examples/vps.nix ./examples/webserver.nix ]; }
#   nix-build nix -A examples.webserver.toplevel       (the same images/vps.toml)
#
# The server is busybox httpd: the applet of pkgsMusl's busybox, which is the system's userland
# anyway, so serving HTTP adds nothing to the image. It serves /data/www (persistent: copy the
# site in with scp) as the user www, and the health check asks it for the front page, so an
# update whose web server does not answer is not marked good and falls back.
{ ... }:
{
  system.name = "webserver";
  hostname = "web";

  users.www = { uid = 33; };
  # A first page until the site is copied in.
  etc."www/index.html" = "<!doctype html><title>web</title><p>It works.\n";
  services.httpd.command = ''
    sh -c 'mkdir -p /data/www && { [ -e /data/www/index.html ] || cp /etc/www/index.html /data/www/; } && exec httpd -f -p 80 -u www -h /data/www'
  '';

  abupdate.healthCheck = ''
    netstat -ltn | grep -q ':22 ' && wget -q -O /dev/null http://127.0.0.1/
  '';
}
