// Package sdnotify tells systemd, under Type=notify, when kone is ready and when it stops.
//
// kone takes the notification socket out of its environment at start: kubelet, running in the
// same process, would otherwise report READY=1 as soon as it starts, long before the node is.
package sdnotify

import (
	"net"
	"os"
)

// Notifier sends state changes to the service manager; with no socket it does nothing.
type Notifier struct{ socket string }

// Take removes NOTIFY_SOCKET from the environment and returns a Notifier for it.
func Take() *Notifier {
	n := &Notifier{socket: os.Getenv("NOTIFY_SOCKET")}
	_ = os.Unsetenv("NOTIFY_SOCKET")
	return n
}

// Ready reports that kone serves.
func (n *Notifier) Ready() error { return n.send("READY=1") }

// Stopping reports that kone is shutting down.
func (n *Notifier) Stopping() error { return n.send("STOPPING=1") }

func (n *Notifier) send(state string) error {
	if n.socket == "" {
		return nil
	}
	addr := &net.UnixAddr{Name: n.socket, Net: "unixgram"}
	if addr.Name[0] == '@' {
		addr.Name = "\x00" + addr.Name[1:] // an abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
