// Tiny helpers shared by every jsonnet app of this repository.
// Found through `render.jsonnet.libs: [lib]`, so callers write `import 'kube.libsonnet'`.
{
  labels(name, env):: {
    'app.kubernetes.io/name': name,
    'app.kubernetes.io/part-of': 'shop',
    environment: env,
  },

  namespace(name):: {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: { name: name },
  },

  configMap(name, namespace, data):: {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: name, namespace: namespace },
    data: data,
  },

  deployment(name, namespace, image, replicas, labels, configMap=null, resources={}):: {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: name, namespace: namespace, labels: labels },
    spec: {
      replicas: replicas,
      selector: { matchLabels: { 'app.kubernetes.io/name': name } },
      template: {
        metadata: { labels: labels },
        spec: {
          containers: [{
            name: name,
            image: image,
            ports: [{ name: 'http', containerPort: 8080 }],
            [if configMap != null then 'envFrom']: [{ configMapRef: { name: configMap } }],
            resources: resources,
          }],
        },
      },
    },
  },

  service(name, namespace, labels):: {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: name, namespace: namespace, labels: labels },
    spec: {
      selector: { 'app.kubernetes.io/name': name },
      ports: [{ name: 'http', port: 80, targetPort: 'http' }],
    },
  },
}
