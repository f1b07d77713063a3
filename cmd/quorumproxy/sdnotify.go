package main

import (
	"net"
	"os"
)

// sdNotify tells systemd (Type=notify) how the proxy stands: "READY=1"
// once its listeners, checks and cluster side are up, "RELOADING=1" and
// "STOPPING=1" around a reload and a drain. Without $NOTIFY_SOCKET (not
// run by systemd) it does nothing; a failed send is not an error of the
// proxy's.
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Write([]byte(state))
}
