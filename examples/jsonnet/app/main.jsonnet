// The catalog service of the shop, for any environment.
//
// External variables (render.jsonnet.extVars), read anywhere with std.extVar:
//   env     string   the environment name
//   domain  string   the public domain of the environment
//   debug   boolean  passed as code (a non-string value in the mapping form, or code: true)
// Top-level arguments (render.jsonnet.tlas) are the parameters of the function below.
local kube = import 'kube.libsonnet';
local sizes = std.parseYaml(importstr 'sizes.yaml');

function(replicas=1, tag='latest', size='small', features={})
  local env = std.extVar('env');
  local ns = 'shop-' + env;
  local name = 'catalog';
  local labels = kube.labels(name, env);
  // An object of named objects (Tanka style): Conveyor walks it and takes every object.
  {
    namespace: kube.namespace(ns),
    config: kube.configMap(name + '-config', ns, {
      PUBLIC_URL: 'https://catalog.' + std.extVar('domain'),
      DEBUG: std.toString(std.extVar('debug')),
      FEATURES: std.join(',', [f for f in std.objectFields(features) if features[f]]),
    }),
    deployment: kube.deployment(
      name, ns, 'ghcr.io/example/catalog:' + tag, replicas, labels,
      configMap=name + '-config',
      resources=sizes[size],
    ),
    service: kube.service(name, ns, labels),
  }
