export { validateNetworkPolicy, parseCidr, parseIp, cidrContains } from './server.js';
export { K8sStandin, STANDIN_BANNER, matchesSelector, extraPodChecks, type JsonPod, type StandinOptions } from './server.js';
