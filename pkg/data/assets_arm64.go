package data

import (
	"embed"
	"io/fs"
)

//go:embed all:assets/arm64
var embedded embed.FS

var assets, _ = fs.Sub(embedded, "assets/arm64")
