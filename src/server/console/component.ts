import type { ServerComponent } from '../component.js';
import { registerSessionRoutes } from './session.js';
import { registerStatic, secureHeaders } from './static.js';

/**
 * The web console at `/`: static assets built at install (web/ → dist/web) and cookie sessions
 * with a CSRF header. It adds no API of its own: the page calls the same /api routes, with the
 * same org checks, as the CLI. The cookie itself is honoured by installSessionAuth, which app.ts
 * installs before every route.
 */
export function consoleComponent(): ServerComponent {
  return {
    name: 'console',
    async registerPublic(app, ctx) {
      registerSessionRoutes(app, ctx);
      app.addHook('onSend', async (req, reply, payload) => {
        if (req.url.startsWith('/console/')) secureHeaders(reply);
        return payload;
      });
      registerStatic(app);
    },
  };
}
