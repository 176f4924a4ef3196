package logging

import (
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Zap returns a zap logger that writes to log with the given component field; etcd logs with
// zap. As with klog, only errors show outside --debug.
func (l *Logging) Zap(component string) *zap.Logger {
	return zap.New(&zapCore{log: l, entry: l.WithField("component", component)})
}

type zapCore struct {
	log    *Logging
	entry  *logrus.Entry
	fields []zapcore.Field
}

func (c *zapCore) level(l zapcore.Level) logrus.Level {
	if l >= zapcore.ErrorLevel {
		return c.log.errorLevel()
	}
	return logrus.DebugLevel
}

func (c *zapCore) Enabled(l zapcore.Level) bool { return c.entry.Logger.IsLevelEnabled(c.level(l)) }

func (c *zapCore) With(fields []zapcore.Field) zapcore.Core {
	return &zapCore{log: c.log, entry: c.entry, fields: append(append([]zapcore.Field(nil), c.fields...), fields...)}
}

func (c *zapCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *zapCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fields...) {
		f.AddTo(enc)
	}
	c.entry.WithFields(logrus.Fields(enc.Fields)).Log(c.level(e.Level), e.Message)
	return nil
}

func (c *zapCore) Sync() error { return nil }
