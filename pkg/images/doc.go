// Package images provides the images a kone node needs without a registry: the pause image,
// built from the pause program kone carries.
package images
