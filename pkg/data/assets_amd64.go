package data

import (
	"embed"
	"io/fs"
)

//go:embed all:assets/amd64
var embedded embed.FS

var assets, _ = fs.Sub(embedded, "assets/amd64")
