module github.com/vigil-sec/vigil

go 1.26.8

require (
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	gonum.org/v1/gonum v0.17.0 // indirect
)
