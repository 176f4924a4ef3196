// Package images provides the images a kone node needs without a registry: the pause image,
// built from the pause program kone carries, and the importer that loads every archive in the
// node's images directory into containerd, pinned, at start and whenever one appears or changes.
package images
