# apptheus.rpm %preun ($1: 0 erase, 1 upgrade). On erase a running service is stopped: its binary
# is about to go. Containers it monitored keep running, unmonitored.
if [ "$1" = 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop apptheus.service || :
fi
