// Full attention: every layer keeps every token of the input stream, in order, at its own index
// as RoPE position. The baseline the other policies are measured against; it has no options.

/** Full attention (the default policy): `{ name: 'full' }`. */
export interface FullAttentionPolicy {
  name: 'full';
}
