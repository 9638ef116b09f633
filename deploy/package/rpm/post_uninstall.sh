# apptheus.rpm %postun ($1: 0 erase, 1 upgrade). systemd forgets the removed unit; erase (RPM has
# no purge) also removes what the daemon and `systemctl enable` left: the state directory and the
# enablement link. /etc/sysconfig/apptheus, if changed, is kept as .rpmsave by rpm itself.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
if [ "$1" = 0 ]; then
    rm -rf /var/lib/apptheus
    # The package's own directories: cargo-generate-rpm 0.21 cannot list directories in the
    # package (its `dir = true` assets fail), so rpm does not remove them by itself.
    rmdir /usr/share/apptheus/grafana /usr/share/apptheus/prometheus /usr/share/apptheus \
        /usr/share/doc/apptheus /usr/share/licenses/apptheus 2>/dev/null || :
    link=/etc/systemd/system/multi-user.target.wants/apptheus.service
    if [ -L "$link" ]; then
        rm -f "$link"
    fi
fi
