# apptheus.rpm %post ($1: 1 install, 2 upgrade). Makes a running systemd see the new or changed
# unit, nothing more: the service is never enabled, started or restarted by the package. After
# an upgrade the daemon that runs is still the old one until `systemctl restart apptheus` (its
# containers are taken back); on a first install, edit /etc/sysconfig/apptheus, then
# `systemctl enable --now apptheus`.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
